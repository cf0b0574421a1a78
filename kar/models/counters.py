"""Point-in-time counters: per user and per item, how many interactions and how many positives
strictly before each sample (same-instant rows excluded), over every logged interaction.

These are the features a practitioner gives any CTR model first (and the ones ``baseline_lr``
uses). Nothing at or after a sample's own timestamp is counted, so a sample never sees its
own label or a later one.
"""

from __future__ import annotations

import numpy as np
import polars as pl

# counter columns of the dense input, in order
COUNTER_NAMES = ("user_count", "user_rate", "item_count", "item_rate")


def counts_before(
    events: pl.DataFrame, samples: pl.DataFrame, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """(positives, interactions) of ``samples[key]`` over ``events`` strictly before each sample."""
    totals = (
        events.group_by(key, "timestamp")
        .agg(pl.col("label").cast(pl.Float64).sum().alias("_pos"), pl.len().alias("_n"))
        .sort(key, "timestamp")
        .with_columns(
            pl.col("_pos").cum_sum().over(key).alias("_pos_upto"),
            pl.col("_n").cum_sum().over(key).alias("_n_upto"),
        )
        .select(key, "timestamp", "_pos_upto", "_n_upto")
        .sort("timestamp")
    )
    # cumulative counts up to and including each instant; the as-of join with exact matches
    # excluded picks the latest instant strictly before the sample.
    joined = (
        samples.select(key, "timestamp")
        .with_row_index("_r")
        .sort("timestamp")
        .join_asof(
            totals,
            on="timestamp",
            by=key,
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
        .sort("_r")
    )
    pos = joined["_pos_upto"].fill_null(0.0).to_numpy().astype(np.float64)
    n = joined["_n_upto"].fill_null(0).to_numpy().astype(np.float64)
    return pos, n


def rates_before(
    events: pl.DataFrame, samples: pl.DataFrame, key: str, prior: float, strength: float
) -> np.ndarray:
    """Smoothed positive rate of ``samples[key]`` over ``events`` strictly before each sample,
    shrunk towards ``prior`` with ``strength`` pseudo-observations."""
    pos, n = counts_before(events, samples, key)
    return (pos + strength * prior) / (n + strength)


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), clipped away from 0 and 1."""
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def counter_matrix(
    events: pl.DataFrame, samples: pl.DataFrame, prior: float, strength: float = 10.0
) -> np.ndarray:
    """(n, 4) float32: log1p(count) and logit(smoothed rate) for the user, then the item."""
    columns = []
    for key in ("user_id", "item_id"):
        pos, n = counts_before(events, samples, key)
        columns += [np.log1p(n), logit((pos + strength * prior) / (n + strength))]
    return np.column_stack(columns).astype(np.float32)
