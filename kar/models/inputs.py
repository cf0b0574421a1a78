"""CTR model inputs: ids -> indices, attributes, behaviour sequences, knowledge matrices.

Index 0 is always padding / unknown. Id-embedding vocabularies are fitted on history + train
only, so ids first seen in valid / test map to 0. Knowledge is looked up through a separate
index over every user and item of the dataset (``user_k`` / ``item_k``): the LLM's knowledge
of an item never seen in training still reaches the model (KAR's cold-start benefit).
Behaviour sequences hold ``history_len`` of the user's interactions strictly before each
sample's timestamp, over all interactions, oldest first, with each one's label
(``history_label``: 2 clicked, 1 not, 0 padding) and its knowledge index (``history_k``):
the most recent ones (``recent``, the default) or, ReLLa's semantic behaviour retrieval
(``retrieved``), those of the last :data:`RETRIEVAL_WINDOW` most similar to the sample's item
by the cosine of item text vectors (:func:`retrieved_sequences`). Point-in-time counters
(:mod:`kar.models.counters`, standardised on train) are the dense input of every backbone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import polars as pl

from kar.data.schema import Dataset, Split
from kar.errors import ConfigError, DataValidationError
from kar.models.counters import COUNTER_NAMES, counter_matrix
from kar.vectors import vector_matrix

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "valid", "test")
SAMPLE_COLUMNS = ("user_id", "item_id", "timestamp", "label")
HistorySelection = Literal["recent", "retrieved"]
HISTORY_SELECTIONS: tuple[str, ...] = get_args(HistorySelection)
RETRIEVAL_WINDOW = 200  # retrieved: the user's last this many prior interactions are ranked
_PAIRS_PER_CHUNK = 1 << 24  # retrieved: similarity matrix cells per chunk of samples


def _vocab(values: pl.Series, name: str) -> pl.DataFrame:
    """Sorted distinct non-null values -> index 1..n (0 is reserved for unknown)."""
    distinct = values.drop_nulls().unique().sort()
    return pl.DataFrame({name: distinct, f"{name}_idx": np.arange(1, len(distinct) + 1)})


def _lookup(frame: pl.DataFrame, key: str, vocab: pl.DataFrame, out: str) -> pl.Series:
    """Map ``frame[key]`` through ``vocab`` (key, key_idx); unknown -> 0."""
    joined = frame.select(pl.col(key)).join(vocab, on=key, how="left", maintain_order="left")
    return joined[f"{key}_idx"].fill_null(0).cast(pl.Int64).alias(out)


def knowledge_matrix(
    vectors: pl.DataFrame,
    vocab: pl.DataFrame,
    id_col: str,
    n_rows: int,
    what: str,
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense (n_rows, d) float32 matrix indexed like ``vocab``, and a missing flag per row.
    ``dim``: the width when ``vectors`` is empty (a kind without knowledge: zeros, missing)."""
    ids, values = vector_matrix(vectors, what, dim=dim if vectors.height == 0 else None,
                                allow_empty=True)  # fmt: skip
    matrix = np.zeros((n_rows, values.shape[1]), dtype=np.float32)
    missing = np.ones(n_rows, dtype=np.float32)
    keyed = pl.DataFrame(
        {id_col: ids, "_row": np.arange(len(ids))}, schema_overrides={id_col: pl.Utf8}
    )
    keyed = keyed.join(vocab, on=id_col, how="inner")
    if keyed.height:
        rows = keyed[f"{id_col}_idx"].to_numpy()
        matrix[rows] = values[keyed["_row"].to_numpy()]
        missing[rows] = 0.0
    return matrix, missing


def prior_events(
    events: pl.DataFrame, samples: pl.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, start, end): ``events[order]`` sorted by (user, time), and for each sample the
    slice ``order[start:end]`` of its user's interactions strictly before its timestamp.

    ``events`` (user_id, timestamp, ...) are all interactions. Vectorised with searchsorted.
    """
    users = pl.concat([events["user_id"], samples["user_id"]]).unique().sort()
    times = pl.concat([events["timestamp"], samples["timestamp"]]).unique().sort()
    u_map = pl.DataFrame({"user_id": users, "_u": np.arange(len(users), dtype=np.int64)})
    t_map = pl.DataFrame({"timestamp": times, "_t": np.arange(len(times), dtype=np.int64)})
    span = len(times) + 1

    def keys(frame: pl.DataFrame) -> np.ndarray:
        coded = frame.join(u_map, on="user_id", how="left", maintain_order="left").join(
            t_map, on="timestamp", how="left", maintain_order="left"
        )
        return coded["_u"].to_numpy() * span + coded["_t"].to_numpy()

    event_keys = keys(events)
    order = np.argsort(event_keys, kind="stable")
    event_keys = event_keys[order]
    sample_keys = keys(samples)
    end = np.searchsorted(event_keys, sample_keys, side="left")  # strictly before (user, ts)
    start = np.searchsorted(event_keys, (sample_keys // span) * span, side="left")  # user's first
    return order, start, end


def last_events(order: np.ndarray, start: np.ndarray, end: np.ndarray, width: int) -> np.ndarray:
    """(n, width) rows ``order[end - width:end]`` per sample, -1 before ``start`` (padding)."""
    idx = end[:, None] - width + np.arange(width)[None, :]
    valid = idx >= start[:, None]
    gathered = order[np.clip(idx, 0, max(len(order) - 1, 0))] if len(order) else 0
    return np.where(valid, gathered, -1).astype(np.int64)


def behaviour_sequences(events: pl.DataFrame, samples: pl.DataFrame, length: int) -> np.ndarray:
    """(n_samples, length) row numbers into ``events``: each sample's user's last ``length``
    interactions (positive or negative) strictly before it, oldest first, -1 for padding.

    ``events`` (user_id, timestamp, ...) are all interactions. Vectorised with one searchsorted.
    """
    return last_events(*prior_events(events, samples), length)


@dataclass(frozen=True)
class ItemSimilarity:
    """Unit-norm item vectors by item id: the cosine of two items (behaviour retrieval)."""

    vocab: pl.DataFrame  # item_id, item_id_idx (1..n)
    unit: np.ndarray  # (n + 1, d) float32; row 0 (no vector) is zeros

    @classmethod
    def from_frame(cls, vectors: pl.DataFrame) -> ItemSimilarity:
        """From an (entity_id, vector) frame of items (e.g. ``EntityVectors.items``)."""
        ids, matrix = vector_matrix(vectors, "item")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        unit = np.zeros((len(ids) + 1, matrix.shape[1]), dtype=np.float32)
        unit[1:] = matrix / np.where(norms > 0, norms, 1.0)
        vocab = pl.DataFrame(
            {"item_id": ids, "item_id_idx": np.arange(1, len(ids) + 1)},
            schema_overrides={"item_id": pl.Utf8},
        )
        return cls(vocab=vocab, unit=unit)

    def codes(self, frame: pl.DataFrame) -> np.ndarray:
        """Each row's item as a row of :attr:`unit` (0: the item has no vector)."""
        return _lookup(frame, "item_id", self.vocab, "_v").to_numpy()

    def pairs(self, targets: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(B, M) cosine of each target code (B,) with each candidate code (B, M), computed
        for the distinct targets; -2 (below any cosine) where either has no vector."""
        t_ids, t_inv = np.unique(targets, return_inverse=True)
        if len(self.unit) <= candidates.size:  # a row per distinct target over every item
            table, cols = self.unit[t_ids] @ self.unit.T, candidates
        else:  # a large catalogue: over the distinct candidates only
            c_ids, c_inv = np.unique(candidates, return_inverse=True)
            table, cols = self.unit[t_ids] @ self.unit[c_ids].T, c_inv.reshape(candidates.shape)
        sims = table[t_inv.reshape(-1, 1), cols]
        return np.where((targets[:, None] > 0) & (candidates > 0), sims, -2.0)


def item_similarity(selection: str, item_vectors: pl.DataFrame | None) -> ItemSimilarity | None:
    """What a behaviour-sequence ``selection`` needs: None for ``recent``, the item vectors'
    :class:`ItemSimilarity` for ``retrieved`` (which cannot go without them)."""
    if selection not in HISTORY_SELECTIONS:
        raise ConfigError(
            f"history selection {selection!r}: expected one of {', '.join(HISTORY_SELECTIONS)}"
        )
    if selection == "recent":
        return None
    if item_vectors is None or item_vectors.height == 0:
        raise ConfigError(
            "history selection 'retrieved' ranks a user's history by item text similarity: "
            "it needs item vectors (an entity_id, vector frame), none were given"
        )
    return ItemSimilarity.from_frame(item_vectors)


def top_in_time_order(candidates: np.ndarray, sims: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` most similar of each row's candidate event rows (oldest first in the
    row, -1 padding), ties to the more recent, returned in time order with padding first."""
    width = candidates.shape[1]
    keyed = np.where(candidates >= 0, -sims, np.inf)[:, ::-1]  # most recent first
    best = np.argsort(keyed, axis=1, kind="stable")[:, :length]
    return np.take_along_axis(candidates, np.sort(width - 1 - best, axis=1), axis=1)


def retrieved_sequences(
    events: pl.DataFrame,
    samples: pl.DataFrame,
    length: int,
    similarity: ItemSimilarity,
    window: int = RETRIEVAL_WINDOW,
) -> np.ndarray:
    """ReLLa's semantic behaviour retrieval: like :func:`behaviour_sequences`, but the
    ``length`` rows are those of the user's last ``window`` interactions strictly before the
    sample whose item is most similar (cosine of item vectors) to the sample's item, kept
    in time order. Items without a vector rank below every other (a target without one
    gets its recent ``length``). Samples are taken in chunks sorted by target item, so each
    chunk compares few distinct targets with few distinct history items."""
    if window < length:
        raise ConfigError(f"retrieval window {window} is shorter than history_len {length}")
    order, start, end = prior_events(events, samples)
    event_codes = similarity.codes(events)
    targets = similarity.codes(samples)
    out = np.full((samples.height, length), -1, dtype=np.int64)
    if events.height == 0:
        return out
    by_target = np.argsort(targets, kind="stable")
    step = int(np.clip(_PAIRS_PER_CHUNK // max(len(similarity.unit), window), 64, 4096))
    for first in range(0, len(by_target), step):
        rows = by_target[first : first + step]
        candidates = last_events(order, start[rows], end[rows], window)
        codes = np.where(candidates >= 0, event_codes[np.clip(candidates, 0, None)], 0)
        sims = similarity.pairs(targets[rows], codes)
        out[rows] = top_in_time_order(candidates, sims, length)
    return out


def _gather(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` with 0 where ``rows`` is -1 (padding)."""
    if len(values) == 0:
        return np.zeros(rows.shape, dtype=np.int64)
    return np.where(rows >= 0, values[np.clip(rows, 0, None)], 0).astype(np.int64)


def _sample_frames(split: Split) -> dict[str, pl.DataFrame]:
    """history + every split, validated and narrowed to :data:`SAMPLE_COLUMNS` (label Int8)."""
    frames = {"history": split.history, **{s: getattr(split, s) for s in SPLITS}}
    for name, frame in frames.items():
        missing = [c for c in SAMPLE_COLUMNS if c not in frame.columns]
        if missing:
            raise DataValidationError(f"split.{name} lacks column", field=missing[0])
        if frame["label"].null_count():
            row = int(frame["label"].is_null().arg_true()[0]) + 1
            raise DataValidationError(f"split.{name} has a null label", row=row, field="label")
    return {k: v.select(SAMPLE_COLUMNS).cast({"label": pl.Int8}) for k, v in frames.items()}


@dataclass
class _UserAttributes:
    """Every str column of the users table besides user_id, as indices per user."""

    names: list[str]
    sizes: list[int]  # cardinality incl. index 0
    table: pl.DataFrame  # user_id, one index column per name


def _user_attributes(users: pl.DataFrame) -> _UserAttributes:
    names = [c for c in users.columns if c != "user_id"]
    table = users.select("user_id")
    sizes = []
    for col in names:
        vocab = _vocab(users[col].cast(pl.Utf8), col)
        table = table.with_columns(
            _lookup(users.with_columns(pl.col(col).cast(pl.Utf8)), col, vocab, col)
        )
        sizes.append(vocab.height + 1)
    return _UserAttributes(names=names, sizes=sizes, table=table)


@dataclass
class _ItemAttributes:
    """Decade of year, top-K creator and padded genre list per item."""

    table: pl.DataFrame  # item_id, year_bucket, creator, _row (into genre_pad)
    genre_pad: np.ndarray  # (n_items, max_genres)
    sizes: list[int]  # year_bucket, creator cardinality incl. index 0
    n_genres: int  # incl. padding 0

    @property
    def max_genres(self) -> int:
        return int(self.genre_pad.shape[1])


def _genre_matrix(items: pl.DataFrame, genre_vocab: pl.DataFrame) -> np.ndarray:
    """(n_items, max_genres) genre indices per item row, 0-padded."""
    max_genres = max(int(items["genres"].list.len().max() or 0), 1)
    genre_lists = (
        items.select("item_id", pl.col("genres").alias("genre"))
        .with_row_index("_r")
        .explode("genre")
        .join(genre_vocab, on="genre", how="left", maintain_order="left")
        .group_by("_r", maintain_order=True)
        .agg(pl.col("genre_idx").fill_null(0))
    )
    genre_pad = np.zeros((items.height, max_genres), dtype=np.int64)
    for r, idxs in zip(
        genre_lists["_r"].to_list(), genre_lists["genre_idx"].to_list(), strict=True
    ):
        genre_pad[r, : len(idxs)] = idxs
    return genre_pad


def _item_attributes(items: pl.DataFrame, top_creators: int) -> _ItemAttributes:
    it = items.with_columns((pl.col("year") // 10 * 10).cast(pl.Utf8).alias("year_bucket"))
    creators = (
        it["creator"].drop_nulls().value_counts(sort=True).head(top_creators)["creator"].sort()
    )
    creator_vocab = pl.DataFrame(
        {"creator": creators, "creator_idx": np.arange(1, len(creators) + 1)}
    )
    year_vocab = _vocab(it["year_bucket"], "year_bucket")
    genre_vocab = _vocab(it["genres"].explode(), "genre")
    table = pl.DataFrame(
        {
            "item_id": it["item_id"],
            "year_bucket": _lookup(it, "year_bucket", year_vocab, "year_bucket"),
            "creator": _lookup(it, "creator", creator_vocab, "creator"),
            "_row": np.arange(it.height, dtype=np.int64),
        }
    )
    return _ItemAttributes(
        table=table,
        genre_pad=_genre_matrix(it, genre_vocab),
        sizes=[year_vocab.height + 1, creator_vocab.height + 1],
        n_genres=genre_vocab.height + 1,
    )


def _standard_counters(
    events: pl.DataFrame, frames: dict[str, pl.DataFrame]
) -> dict[str, np.ndarray]:
    """Point-in-time counters per split, standardised on train (float32)."""
    prior = float(frames["train"]["label"].cast(pl.Float64).mean() or 0.5)
    counters = {s: counter_matrix(events, frames[s], prior) for s in SPLITS}
    width = len(COUNTER_NAMES)
    c_mean = counters["train"].mean(0) if len(counters["train"]) else np.zeros(width)
    c_std = counters["train"].std(0) if len(counters["train"]) else np.ones(width)
    c_std = np.where(c_std > 1e-6, c_std, 1.0)
    return {s: ((c - c_mean) / c_std).astype(np.float32) for s, c in counters.items()}


def _fit_count(frame: pl.DataFrame, key: str, table: pl.DataFrame) -> np.ndarray:
    """Per row of ``frame``: ``table``'s count (``_n``) for its ``key``, 0 when absent."""
    joined = frame.select(key).join(table, on=key, how="left", maintain_order="left")
    return joined["_n"].fill_null(0).to_numpy().astype(np.int64)


@dataclass
class _Indexer:
    """What indexing one split needs: vocabularies, attributes, events and counters."""

    users: pl.DataFrame
    items: pl.DataFrame
    k_users: pl.DataFrame
    k_items: pl.DataFrame
    user_attrs: _UserAttributes
    item_attrs: _ItemAttributes
    events: pl.DataFrame  # every interaction, sorted by user, timestamp
    counters: dict[str, np.ndarray]  # split -> standardised counters
    history_len: int
    similarity: ItemSimilarity | None = None  # set: retrieved sequences, else recent ones
    retrieval_window: int = RETRIEVAL_WINDOW

    def sequences(self, frame: pl.DataFrame) -> np.ndarray:
        """Each row's behaviour sequence as rows of :attr:`events` (-1 padding)."""
        if self.similarity is None:
            return behaviour_sequences(self.events, frame, self.history_len)
        return retrieved_sequences(
            self.events, frame, self.history_len, self.similarity, self.retrieval_window
        )

    @cached_property
    def event_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per event: item index, knowledge item index, label + 1 (1 not clicked, 2 clicked)."""
        items = _lookup(self.events, "item_id", self.items, "item_idx").to_numpy()
        items_k = _lookup(self.events, "item_id", self.k_items, "item_k").to_numpy()
        labels = self.events["label"].to_numpy().astype(np.int64) + 1
        return items, items_k, labels

    def attribute_arrays(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """user_attrs, item_attrs and genres for each row of ``frame``."""
        ua = frame.select("user_id").join(
            self.user_attrs.table, on="user_id", how="left", maintain_order="left"
        )
        ia = frame.select("item_id").join(
            self.item_attrs.table, on="item_id", how="left", maintain_order="left"
        )
        item_rows = ia["_row"].fill_null(-1).to_numpy()
        known = item_rows >= 0
        genres = np.zeros((frame.height, self.item_attrs.max_genres), dtype=np.int64)
        genres[known] = self.item_attrs.genre_pad[item_rows[known]]
        names = self.user_attrs.names
        return {
            "user_attrs": (
                ua.select(names).fill_null(0).to_numpy().astype(np.int64)
                if names
                else np.zeros((frame.height, 0), dtype=np.int64)
            ),
            "item_attrs": ia.select("year_bucket", "creator")
            .fill_null(0)
            .to_numpy()
            .astype(np.int64),
            "genres": genres,
        }

    def split_arrays(self, name: str, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """Every model input of split ``name`` (rows of ``frame``), C-contiguous and writable."""
        event_items, event_items_k, event_labels = self.event_columns
        seq = self.sequences(frame)
        arrays = {
            "user": _lookup(frame, "user_id", self.users, "user").to_numpy(),
            "item": _lookup(frame, "item_id", self.items, "item").to_numpy(),
            "user_k": _lookup(frame, "user_id", self.k_users, "user_k").to_numpy(),
            "item_k": _lookup(frame, "item_id", self.k_items, "item_k").to_numpy(),
            **self.attribute_arrays(frame),
            "history": _gather(event_items, seq),
            "history_k": _gather(event_items_k, seq),
            "history_label": _gather(event_labels, seq),
            "counters": self.counters[name],
            "label": frame["label"].to_numpy().astype(np.float32),
        }
        return {k: np.require(v, requirements=["C", "W"]) for k, v in arrays.items()}


@dataclass
class CTRFeatures:
    """Everything a CTR model needs, as index arrays; build with :meth:`build`."""

    users: pl.DataFrame  # user_id, user_id_idx (id embeddings: history + train)
    items: pl.DataFrame  # item_id, item_id_idx
    knowledge_users: pl.DataFrame  # user_id, user_id_idx over every user (knowledge rows)
    knowledge_items: pl.DataFrame  # item_id, item_id_idx over every item
    user_attr_names: list[str]
    user_attr_sizes: list[int]  # cardinality incl. index 0
    item_attr_names: list[str]  # year_bucket, creator
    item_attr_sizes: list[int]
    n_genres: int  # incl. padding 0
    history_len: int
    arrays: dict[str, dict[str, np.ndarray]]  # split -> name -> array
    samples: dict[str, pl.DataFrame]  # split -> user_id, item_id, timestamp, label
    events: pl.DataFrame  # every interaction (history + splits): user_id, item_id, timestamp, label
    # split -> {"user": .., "item": ..}: interactions in history + train of each row's user / item
    fit_counts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    user_knowledge: np.ndarray | None = None  # (knowledge_users.height + 1, d)
    item_knowledge: np.ndarray | None = None  # (knowledge_items.height + 1, d)
    user_missing: np.ndarray | None = None  # 1.0 where no knowledge
    item_missing: np.ndarray | None = None
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.users.height

    @property
    def n_items(self) -> int:
        return self.items.height

    @property
    def has_knowledge(self) -> bool:
        return self.user_knowledge is not None and self.item_knowledge is not None

    @property
    def knowledge_dim(self) -> int:
        if not self.has_knowledge:
            return 0
        return int(self.user_knowledge.shape[1])  # type: ignore[union-attr]

    def tensors(self, split: str) -> dict[str, torch.Tensor]:
        """The split's arrays as torch tensors (labels and counters float32, the rest int64)."""
        import torch

        if split not in self.arrays:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        arrays = self.arrays[split]
        return {k: torch.from_numpy(np.require(v, requirements="W")) for k, v in arrays.items()}

    def knowledge_tensors(self) -> dict[str, torch.Tensor]:
        """user/item knowledge matrices and missing flags as tensors (empty if none)."""
        import torch

        if not self.has_knowledge:
            return {}
        return {
            "user_knowledge": torch.from_numpy(self.user_knowledge),
            "item_knowledge": torch.from_numpy(self.item_knowledge),
            "user_missing": torch.from_numpy(self.user_missing),
            "item_missing": torch.from_numpy(self.item_missing),
        }

    def with_knowledge(self, users: pl.DataFrame, items: pl.DataFrame) -> CTRFeatures:
        """The same samples with raw knowledge vectors (entity_id, vector) for users and items.
        A kind with no vectors at all (item knowledge only, say) is all zeros, all missing."""
        dim = next((len(f["vector"][0]) for f in (users, items) if f.height), None)
        user_k, user_missing = knowledge_matrix(
            users, self.knowledge_users, "user_id", self.knowledge_users.height + 1, "user", dim
        )
        item_k, item_missing = knowledge_matrix(
            items, self.knowledge_items, "item_id", self.knowledge_items.height + 1, "item", dim
        )
        if user_k.shape[1] != item_k.shape[1]:
            raise DataValidationError(
                f"user knowledge dim {user_k.shape[1]} != item knowledge dim {item_k.shape[1]}",
                field="vector",
            )
        return dataclasses.replace(
            self,
            user_knowledge=user_k,
            user_missing=user_missing,
            item_knowledge=item_k,
            item_missing=item_missing,
        )

    def with_shuffled_knowledge(self, seed: int = 0) -> CTRFeatures:
        """The control arm: the same raw knowledge vectors permuted across the entities that
        have knowledge (per kind), so the distribution is kept and the information is gone."""
        if not self.has_knowledge:
            raise ValueError("these features carry no knowledge to shuffle")
        rng = np.random.default_rng(seed)

        def permute(matrix: np.ndarray, missing: np.ndarray) -> np.ndarray:
            rows = np.flatnonzero(missing == 0)
            out = matrix.copy()
            out[rows] = matrix[rng.permutation(rows)]
            return out

        return dataclasses.replace(
            self,
            user_knowledge=permute(self.user_knowledge, self.user_missing),  # type: ignore[arg-type]
            item_knowledge=permute(self.item_knowledge, self.item_missing),  # type: ignore[arg-type]
            meta={**self.meta, "knowledge": f"shuffled-seed{seed}"},
        )

    def without_knowledge(self) -> CTRFeatures:
        """The same features with the knowledge matrices dropped."""
        return CTRFeatures(
            **{
                **self.__dict__,
                "user_knowledge": None,
                "item_knowledge": None,
                "user_missing": None,
                "item_missing": None,
            }
        )

    @classmethod
    def build(
        cls,
        ds: Dataset,
        split: Split,
        history_len: int = 20,
        knowledge_users: pl.DataFrame | None = None,
        knowledge_items: pl.DataFrame | None = None,
        top_creators: int = 500,
        history_selection: HistorySelection = "recent",
        item_vectors: pl.DataFrame | None = None,
        retrieval_window: int = RETRIEVAL_WINDOW,
    ) -> CTRFeatures:
        """Index ``split`` for CTR training; knowledge frames are (entity_id, vector).

        ``history_selection``: ``recent`` (the last ``history_len`` interactions) or
        ``retrieved`` (:func:`retrieved_sequences` over the last ``retrieval_window``, by
        the cosine of ``item_vectors``, an (entity_id, vector) frame of items)."""
        if history_len < 1:
            raise ValueError("history_len must be >= 1")
        similarity = item_similarity(history_selection, item_vectors)
        if (knowledge_users is None) != (knowledge_items is None):
            raise ValueError("give both knowledge_users and knowledge_items, or neither")
        frames = _sample_frames(split)
        fit = pl.concat([frames["history"], frames["train"]])
        all_events = pl.concat(frames.values())
        events = pl.concat([frames[k] for k in ("history", *SPLITS)]).sort(
            "user_id", "timestamp", maintain_order=True
        )
        indexer = _Indexer(
            users=_vocab(fit["user_id"], "user_id"),
            items=_vocab(fit["item_id"], "item_id"),
            k_users=_vocab(pl.concat([ds.users["user_id"], all_events["user_id"]]), "user_id"),
            k_items=_vocab(pl.concat([ds.items["item_id"], all_events["item_id"]]), "item_id"),
            user_attrs=_user_attributes(ds.users),
            item_attrs=_item_attributes(ds.items, top_creators),
            events=events,
            counters=_standard_counters(events, frames),
            history_len=history_len,
            similarity=similarity,
            retrieval_window=retrieval_window,
        )
        fit_n = {key: fit.group_by(f"{key}_id").len("_n") for key in ("user", "item")}
        arrays = {s: indexer.split_arrays(s, frames[s]) for s in SPLITS}
        fit_counts = {
            s: {key: _fit_count(frames[s], f"{key}_id", fit_n[key]) for key in ("user", "item")}
            for s in SPLITS
        }
        out = cls(
            users=indexer.users,
            items=indexer.items,
            knowledge_users=indexer.k_users,
            knowledge_items=indexer.k_items,
            user_attr_names=indexer.user_attrs.names,
            user_attr_sizes=indexer.user_attrs.sizes,
            item_attr_names=["year_bucket", "creator"],
            item_attr_sizes=indexer.item_attrs.sizes,
            n_genres=indexer.item_attrs.n_genres,
            history_len=history_len,
            arrays=arrays,
            samples={s: frames[s] for s in SPLITS},
            events=events,
            fit_counts=fit_counts,
            meta={"dataset": ds.name, "history_selection": history_selection},
        )
        if knowledge_users is not None and knowledge_items is not None:
            out = out.with_knowledge(knowledge_users, knowledge_items)
        return out
