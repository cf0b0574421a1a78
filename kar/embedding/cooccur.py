"""Collaborative positives (NoteLLM): item pairs that co-occur in users' training-time histories.

Only the interactions a model may learn from are read: the split's ``history`` (the users'
earliest interactions) and ``train``. Valid and test interactions never contribute, so
no pair is learnt from the future the evaluation asks about.

Score of a pair (a, b): each user adds ``1 / n_u`` (``n_u``: the user's training-time
interaction count, which damps heavy users, as NoteLLM does) for every time a and b are
within ``window`` positions of each other in the user's time-ordered sequence. Each item
keeps its ``top_k`` partners by score; pairs are undirected and returned once.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kar.data.schema import Split
from kar.errors import KarError


def training_interactions(split: Split) -> pl.DataFrame:
    """The interactions a model may fit on: history + train, ordered by user, time, item."""
    return pl.concat([split.history, split.train], how="vertical_relaxed").sort(
        "user_id", "timestamp", "item_id"
    )


def cooccurrence_pairs(
    split: Split,
    window: int = 10,
    top_k: int = 10,
    min_score: float = 0.0,
) -> pl.DataFrame:
    """Frame (item_a, item_b, score), item_a < item_b, best first (see the module docstring)."""
    if window < 1 or top_k < 1:
        raise KarError(f"window and top_k must be >= 1 (got {window}, {top_k})")
    frame = training_interactions(split)
    empty = pl.DataFrame(schema={"item_a": pl.Utf8, "item_b": pl.Utf8, "score": pl.Float64})
    if frame.height == 0:
        return empty
    item_ids = frame["item_id"].unique().sort().to_list()
    index = {item: i for i, item in enumerate(item_ids)}
    codes = np.array([index[i] for i in frame["item_id"].to_list()], dtype=np.int64)
    users = frame["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    rows, cols, vals = [], [], []
    for start, end in zip(starts, ends, strict=True):
        seq = codes[start:end]
        n = len(seq)
        for offset in range(1, min(window, n - 1) + 1):
            a, b = seq[:-offset], seq[offset:]
            rows.append(a)
            cols.append(b)
            vals.append(np.full(len(a), 1.0 / n))
    if not rows:
        return empty
    from scipy.sparse import coo_matrix

    size = len(item_ids)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    # symmetric: (a, b) and (b, a) are the same pair; the diagonal (none: no repeats) dropped
    matrix = coo_matrix((np.r_[v, v], (np.r_[r, c], np.r_[c, r])), shape=(size, size)).tocsr()
    matrix.setdiag(0)
    matrix.eliminate_zeros()
    keep: dict[tuple[int, int], float] = {}
    for i in range(size):
        lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
        if lo == hi:
            continue
        partners, scores = matrix.indices[lo:hi], matrix.data[lo:hi]
        best = np.argsort(-scores, kind="stable")[:top_k]
        for j, s in zip(partners[best], scores[best], strict=True):
            if s > min_score:
                key = (min(i, int(j)), max(i, int(j)))
                keep[key] = float(s)
    if not keep:
        return empty
    pairs = sorted(keep.items(), key=lambda kv: (-kv[1], kv[0]))
    return pl.DataFrame(
        {
            "item_a": [item_ids[a] for (a, _), _ in pairs],
            "item_b": [item_ids[b] for (_, b), _ in pairs],
            "score": [s for _, s in pairs],
        },
        schema={"item_a": pl.Utf8, "item_b": pl.Utf8, "score": pl.Float64},
    )
