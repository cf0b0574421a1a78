"""Small datasets for tests, docs and quick checks of the CTR stack.

``synthetic_dataset`` hides a per-item quality bit that drives the label, so item knowledge
that reveals the bit is genuinely informative. ``simple_time_split`` is a minimal KAR-style
split (each user's first interactions -> history; the rest by global time); the full
splitter lives in ``kar.data``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

from kar.data.schema import INTERACTION_SCHEMA, TIMESTAMP, Dataset, Split


def simple_time_split(
    interactions: pl.DataFrame, n_history: int = 5, valid_frac: float = 0.1, test_frac: float = 0.1
) -> Split:
    """History = each user's first ``n_history`` rows; the rest split by time quantiles."""
    ordered = interactions.sort("user_id", "timestamp", "item_id").with_columns(
        pl.int_range(pl.len()).over("user_id").alias("_pos")
    )
    history = ordered.filter(pl.col("_pos") < n_history).drop("_pos")
    rest = ordered.filter(pl.col("_pos") >= n_history).drop("_pos").sort("timestamp")
    t_valid = rest["timestamp"].quantile(1 - valid_frac - test_frac, "lower")
    t_test = rest["timestamp"].quantile(1 - test_frac, "lower")
    as_of = history.group_by("user_id").agg(pl.col("timestamp").max().alias("as_of"))
    return Split(
        history=history,
        train=rest.filter(pl.col("timestamp") <= t_valid),
        valid=rest.filter((pl.col("timestamp") > t_valid) & (pl.col("timestamp") <= t_test)),
        test=rest.filter(pl.col("timestamp") > t_test),
        as_of=as_of.sort("user_id"),
    )


def synthetic_dataset(
    n_users: int = 300, n_items: int = 1500, n_rows: int = 9000, seed: int = 0
) -> tuple[Dataset, pl.DataFrame]:
    """A dataset whose labels follow a hidden item bit; returns it and (item_id, good)."""
    rng = np.random.default_rng(seed)
    good = rng.integers(0, 2, n_items)
    item_ids = [f"i{j}" for j in range(n_items)]
    user_ids = [f"u{j}" for j in range(n_users)]
    u = rng.integers(0, n_users, n_rows)
    i = rng.integers(0, n_items, n_rows)
    p = np.where(good[i] == 1, 0.8, 0.2)
    label = (rng.random(n_rows) < p).astype(np.int8)
    start = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    ts = (start + rng.integers(0, 3600 * 24 * 365, n_rows)) * 1_000_000
    interactions = pl.DataFrame(
        {
            "user_id": [user_ids[k] for k in u],
            "item_id": [item_ids[k] for k in i],
            "timestamp": pl.Series(ts, dtype=pl.Int64).cast(TIMESTAMP),
            "rating": (label * 4 + 1).astype(np.float64),
            "label": label,
        },
        schema=INTERACTION_SCHEMA,
    ).unique(["user_id", "item_id"], keep="first", maintain_order=True)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance"]
    items = pl.DataFrame(
        {
            "item_id": item_ids,
            "title": [f"Item {j}" for j in range(n_items)],
            "year": rng.integers(1950, 2020, n_items).astype(np.int32),
            "genres": [
                list(rng.choice(genres, rng.integers(1, 3), replace=False)) for _ in item_ids
            ],
            "creator": [f"c{k}" for k in rng.integers(0, 50, n_items)],
        },
        schema_overrides={"year": pl.Int32},
    )
    users = pl.DataFrame(
        {"user_id": user_ids, "gender": [str(g) for g in rng.choice(["F", "M"], n_users)]}
    )
    truth = pl.DataFrame({"item_id": item_ids, "good": good.astype(np.int8)})
    return Dataset("synthetic", interactions, items, users), truth


def random_knowledge(ids: list[str], dim: int = 16, seed: int = 0) -> pl.DataFrame:
    """(entity_id, vector) frame of standard-normal float32 vectors."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(ids), dim)).astype(np.float32)
    return pl.DataFrame(
        {"entity_id": ids, "vector": list(vectors)},
        schema={"entity_id": pl.Utf8, "vector": pl.List(pl.Float32)},
    )


def synthetic_knowledge(
    ds: Dataset, truth: pl.DataFrame, dim: int = 8, informative: bool = True, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(users, items) knowledge frames; item vectors one-hot the hidden bit when informative,
    plus noise dimensions; otherwise pure noise."""
    users = random_knowledge(ds.users["user_id"].to_list(), dim, seed)
    items = random_knowledge(truth["item_id"].to_list(), dim, seed + 1)
    if informative:
        good = truth["good"].to_numpy()
        vectors = np.stack(items["vector"].to_list()).astype(np.float32)
        vectors[:, 0], vectors[:, 1] = good, 1 - good
        items = items.with_columns(pl.Series("vector", list(vectors), dtype=pl.List(pl.Float32)))
    return users, items
