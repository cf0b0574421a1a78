"""KAR's time split: per-user history for prompts, then a global-time train/valid/test split.

Protocol (docs/data.md):
1. Each user's interactions are ordered by exact timestamp, ties broken by item_id.
2. The earliest ``h = min(history_cap, floor(n * history_fraction))`` go to ``history``
   (at least ``min(min_history, n - 1)`` when ``n >= 2``). Rows sharing the timestamp of
   the last history row are moved into history too, so no timestamp straddles the boundary.
3. ``as_of`` = last history timestamp + 1 µs (users without history: their first timestamp).
   So every history row < as_of <= every CTR row of that user.
4. The remaining (CTR) rows are cut by global timestamp quantiles: the latest
   ``test_fraction`` -> test, the ``valid_fraction`` before it -> valid, the rest -> train.
   Rows sharing a timestamp land in the same split, so test >= valid >= train in time.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta

import polars as pl

from .schema import Dataset, Split

log = logging.getLogger(__name__)


def _boundary(ts: pl.Series, fraction: float) -> object | None:
    """Smallest timestamp of the latest ``fraction`` of the (sorted) timestamps, or None."""
    if fraction <= 0 or ts.len() == 0:
        return None
    start = math.ceil(ts.len() * (1.0 - fraction))
    return ts[start] if start < ts.len() else None


def make_time_split(
    ds: Dataset,
    history_cap: int = 20,
    history_fraction: float = 0.5,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_history: int = 1,
) -> Split:
    """Split ``ds.interactions`` by KAR's protocol (see the module docstring)."""
    if not 0 <= history_fraction <= 1:
        raise ValueError(f"history_fraction must be in [0, 1], got {history_fraction}")
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction > 1:
        raise ValueError("valid_fraction and test_fraction must be >= 0 and sum to <= 1")
    if history_cap < 0 or min_history < 0:
        raise ValueError("history_cap and min_history must be >= 0")
    cols = ds.interactions.columns
    df = ds.interactions.sort("user_id", "timestamp", "item_id").with_columns(
        pl.int_range(pl.len()).over("user_id").alias("__rank"),
        pl.len().over("user_id").alias("__n"),
    )
    n = pl.col("__n")
    h = pl.min_horizontal(pl.lit(history_cap), (n * history_fraction).floor().cast(pl.Int64))
    h = pl.when(n >= 2).then(pl.max_horizontal(h, pl.min_horizontal(min_history, n - 1)))
    df = df.with_columns(h.otherwise(0).cast(pl.Int64).alias("__h"))
    # timestamp of the last planned history row; ties with it join the history
    last = pl.col("timestamp").filter(pl.col("__rank") == pl.col("__h") - 1).first()
    df = df.with_columns(last.over("user_id").alias("__last"))
    in_history = pl.col("__last").is_not_null() & (pl.col("timestamp") <= pl.col("__last"))
    df = df.with_columns(in_history.alias("__hist"))
    as_of = (
        df.group_by("user_id")
        .agg(
            pl.col("__last").first(),
            pl.col("timestamp").min().alias("__first"),
            pl.col("__hist").sum().alias("n_history"),
            pl.len().alias("n_interactions"),
        )
        .with_columns(
            pl.when(pl.col("__last").is_not_null())
            .then(pl.col("__last") + timedelta(microseconds=1))
            .otherwise(pl.col("__first"))
            .alias("as_of")
        )
        .select(
            "user_id",
            "as_of",
            pl.col("n_history").cast(pl.Int64),
            pl.col("n_interactions").cast(pl.Int64),
        )
        .sort("user_id")
    )
    history = df.filter(pl.col("__hist")).select(cols)
    ctr = df.filter(~pl.col("__hist")).select(cols)
    ts = ctr.get_column("timestamp").sort()
    t_test = _boundary(ts, test_fraction)
    t_valid = _boundary(ts, test_fraction + valid_fraction)
    t = pl.col("timestamp")
    is_test = t >= t_test if t_test is not None else pl.lit(False)
    is_valid = (t >= t_valid) & ~is_test if t_valid is not None else pl.lit(False)
    split = ctr.with_columns(is_test.alias("__test"), is_valid.alias("__valid"))
    test = split.filter("__test").select(cols)
    valid = split.filter("__valid").select(cols)
    train = split.filter(~pl.col("__test") & ~pl.col("__valid")).select(cols)
    log.info(
        "%s split: history %d, train %d, valid %d, test %d rows; %d users",
        ds.name,
        history.height,
        train.height,
        valid.height,
        test.height,
        as_of.height,
    )
    return Split(history=history, train=train, valid=valid, test=test, as_of=as_of)
