"""The one schema every loader produces (polars frames).

interactions: user_id str, item_id str, timestamp Datetime(us, UTC), rating f64 (nullable), label i8
items:        item_id str, title str, year i32 (nullable), genres list[str], creator str (nullable),
              plus any extra attribute columns (str)
users:        user_id str, plus attribute columns (str; e.g. age, gender, occupation)
Ids are strings everywhere (Feast join keys, prompts, stores); models map them to indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import overload

import polars as pl

TIMESTAMP = pl.Datetime("us", "UTC")


@overload
def to_utc(ts: datetime) -> datetime: ...
@overload
def to_utc(ts: None) -> None: ...
def to_utc(ts: datetime | None) -> datetime | None:
    """A timezone-aware UTC datetime; a naive one is taken as UTC (kar's timestamps are UTC)."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "timestamp": TIMESTAMP,
    "rating": pl.Float64,
    "label": pl.Int8,
}
ITEM_REQUIRED: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "year": pl.Int32,
    "genres": pl.List(pl.Utf8),
    "creator": pl.Utf8,
}
USER_REQUIRED: dict[str, pl.DataType] = {"user_id": pl.Utf8}


@dataclass
class Dataset:
    """A validated dataset: three frames in the schema above, and where it came from."""

    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    scenario: str = "movies"  # name of the prompts/<scenario>.yaml it uses by default
    rejects: pl.DataFrame | None = None  # rows that could not be used, with a `reason` column
    meta: dict[str, object] = field(default_factory=dict)


@dataclass
class Split:
    """KAR's protocol: each user's earliest interactions feed the user prompt (``history``)
    and never become CTR samples; the rest is split by time into train / valid / test.

    ``as_of`` has one row per user (user_id, as_of): the user prompt uses interactions
    strictly before ``as_of``, and the knowledge vector is valid from ``as_of`` on.
    """

    history: pl.DataFrame
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    as_of: pl.DataFrame
