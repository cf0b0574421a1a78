"""Next-item retrieval on a time split: events, scorers, Recall@K and NDCG@K.

An event is one interaction (user, item, time) of the evaluated part (valid or test) whose
item the user had not interacted with before. Its query is the user's interactions strictly
before that time (from every part of the split: they are the past at query time); the
candidates are all catalogue items except those the user already interacted with. A
*cold* event's item has no training-time interaction (history + train), so an ID model
has no representation of it: ID scorers give such items no score (they are never retrieved).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from kar.data.schema import Split
from kar.embedding.cooccur import training_interactions
from kar.errors import KarError

Scorer = Callable[["Events", np.ndarray], np.ndarray]  # (events, rows) -> scores (rows, items)


@dataclass
class Events:
    """Next-item events over a fixed item catalogue (indices into ``item_ids``)."""

    item_ids: list[str]
    users: list[str]
    targets: np.ndarray  # (n,) item index
    histories: list[np.ndarray]  # item indices strictly before the event, oldest first
    cold: np.ndarray  # (n,) bool: target has no training-time interaction
    warm_items: np.ndarray  # (n_items,) bool: item has a training-time interaction

    def __len__(self) -> int:
        return len(self.targets)

    def recent(self, n: int) -> list[np.ndarray]:
        """The last ``n`` history items of each event."""
        return [h[-n:] for h in self.histories]

    def subset(self, rows: np.ndarray) -> Events:
        return Events(
            self.item_ids,
            [self.users[i] for i in rows],
            self.targets[rows],
            [self.histories[i] for i in rows],
            self.cold[rows],
            self.warm_items,
        )


def next_item_events(
    split: Split,
    item_ids: Sequence[str],
    part: str = "test",
    max_events: int | None = None,
    seed: int = 0,
) -> Events:
    """Events of ``split.<part>`` (``valid`` or ``test``); ``max_events`` subsamples them."""
    if part not in ("valid", "test"):
        raise KarError(f"part must be 'valid' or 'test', got {part!r}")
    index = {item: i for i, item in enumerate(item_ids)}
    every = pl.concat(
        [split.history, split.train, split.valid, split.test], how="vertical_relaxed"
    ).sort("user_id", "timestamp", "item_id")
    unknown = every.filter(~pl.col("item_id").is_in(list(index)))
    if unknown.height:
        raise KarError(f"interaction with item {unknown['item_id'][0]!r} not in the catalogue")
    warm = np.zeros(len(item_ids), dtype=bool)
    warm[[index[i] for i in training_interactions(split)["item_id"].unique().to_list()]] = True
    wanted = getattr(split, part).select("user_id", "item_id", "timestamp")
    wanted_keys = set(wanted.select("user_id", "item_id").iter_rows())
    users, targets, histories = [], [], []
    for (user,), group in every.group_by(["user_id"], maintain_order=True):
        items = np.array([index[i] for i in group["item_id"].to_list()], dtype=np.int64)
        times = group["timestamp"].to_numpy()
        raw = group["item_id"].to_list()
        for j in range(len(items)):
            if (user, raw[j]) not in wanted_keys:
                continue
            before = items[: np.searchsorted(times, times[j], side="left")]
            if items[j] in set(before.tolist()):
                continue
            users.append(str(user))
            targets.append(int(items[j]))
            histories.append(before)
    events = Events(
        list(item_ids),
        users,
        np.array(targets, dtype=np.int64),
        histories,
        ~warm[np.array(targets, dtype=np.int64)] if targets else np.zeros(0, dtype=bool),
        warm,
    )
    if max_events is not None and len(events) > max_events:
        rows = np.sort(np.random.default_rng(seed).choice(len(events), max_events, replace=False))
        events = events.subset(rows)
    return events


@dataclass(frozen=True)
class Metrics:
    """Mean Recall@10, Recall@50, NDCG@10 over events, and how many events."""

    recall10: float
    recall50: float
    ndcg10: float
    n: int

    def row(self) -> list[str]:
        return [f"{self.recall10:.4f}", f"{self.recall50:.4f}", f"{self.ndcg10:.4f}", str(self.n)]


def ranks(events: Events, scorer: Scorer, chunk: int = 1024) -> np.ndarray:
    """0-based rank of each event's target among unseen items (ties count against it)."""
    out = np.empty(len(events), dtype=np.int64)
    for start in range(0, len(events), chunk):
        rows = np.arange(start, min(start + chunk, len(events)))
        scores = np.asarray(scorer(events, rows), dtype=np.float64).copy()
        for k, i in enumerate(rows):
            scores[k, events.histories[i]] = -np.inf
        target = scores[np.arange(len(rows)), events.targets[rows]]
        out[rows] = (scores >= target[:, None]).sum(axis=1) - 1
    return out


def metrics(rank: np.ndarray) -> Metrics:
    """Recall@10/50 and NDCG@10 of one target per event from its 0-based rank."""
    if len(rank) == 0:
        return Metrics(0.0, 0.0, 0.0, 0)
    ndcg = np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0)
    return Metrics(
        float((rank < 10).mean()), float((rank < 50).mean()), float(ndcg.mean()), len(rank)
    )


def evaluate(events: Events, scorer: Scorer) -> tuple[Metrics, Metrics]:
    """(all events, cold events) metrics of a scorer."""
    rank = ranks(events, scorer)
    return metrics(rank), metrics(rank[events.cold])


# --- scorers -------------------------------------------------------------------------


def id_only(scores: np.ndarray, warm_items: np.ndarray) -> np.ndarray:
    """``scores`` (n, n_items) with every cold item (``warm_items`` False: no training-time
    interaction) set to -inf, in place when ``scores`` is already a writable array of its
    dtype. An ID model has nothing for such items, so it never retrieves them."""
    scores = np.asarray(scores)
    scores[:, ~np.asarray(warm_items, dtype=bool)] = -np.inf
    return scores


def popularity_scorer(split: Split, item_ids: Sequence[str]) -> Scorer:
    """Training-time interaction count per item (the trivial baseline)."""
    counts = training_interactions(split)["item_id"].value_counts()
    lookup = dict(zip(counts["item_id"].to_list(), counts["count"].to_list(), strict=True))
    pop = np.array([lookup.get(i, 0) for i in item_ids], dtype=np.float64)

    def score(events: Events, rows: np.ndarray) -> np.ndarray:
        return id_only(np.tile(pop, (len(rows), 1)), events.warm_items)

    return score


def mean_history_scorer(vectors: np.ndarray, n_recent: int = 20) -> Scorer:
    """Cosine between the mean of the last ``n_recent`` history embeddings and every item."""
    item = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)

    def score(events: Events, rows: np.ndarray) -> np.ndarray:
        users = np.zeros((len(rows), item.shape[1]), dtype=np.float32)
        for k, i in enumerate(rows):
            hist = events.histories[i][-n_recent:]
            if len(hist):
                users[k] = item[hist].mean(axis=0)
        return users @ item.T

    return score


def user_vector_scorer(
    vectors: np.ndarray, user_fn: Callable[[list[np.ndarray]], np.ndarray]
) -> Scorer:
    """Dot product of ``user_fn(histories)`` (n, dim) with the item ``vectors``."""

    def score(events: Events, rows: np.ndarray) -> np.ndarray:
        return user_fn([events.histories[i] for i in rows]) @ vectors.T

    return score


def als_scorer(
    split: Split,
    item_ids: Sequence[str],
    factors: int = 64,
    regularization: float = 0.05,
    alpha: float = 1.0,
    iterations: int = 15,
    seed: int = 0,
) -> Scorer:
    """implicit's ALS on the training-time user x item matrix; each query's user factors are
    solved from its own history (``recalculate_user``), so any history can be scored."""
    from implicit.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix

    frame = training_interactions(split)
    index = {item: i for i, item in enumerate(item_ids)}
    user_index = {u: i for i, u in enumerate(frame["user_id"].unique().sort().to_list())}
    rows = np.array([user_index[u] for u in frame["user_id"].to_list()])
    cols = np.array([index[i] for i in frame["item_id"].to_list()])
    matrix = csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(user_index), len(item_ids))
    )
    model = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=alpha,
        iterations=iterations,
        random_state=seed,
        num_threads=1,
        calculate_training_loss=False,
    )
    model.fit(matrix, show_progress=False)
    item_factors = np.asarray(model.item_factors)

    def score(events: Events, rows_: np.ndarray) -> np.ndarray:
        hist = [events.histories[i] for i in rows_]
        indptr = np.r_[0, np.cumsum([len(h) for h in hist])]
        indices = np.concatenate(hist) if hist else np.zeros(0, dtype=np.int64)
        user_items = csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr),
            shape=(len(rows_), len(item_ids)),
        )
        users = model.recalculate_user(np.arange(len(rows_)), user_items)
        return id_only(np.asarray(users @ item_factors.T, dtype=np.float64), events.warm_items)

    return score
