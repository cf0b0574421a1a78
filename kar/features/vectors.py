"""Validate knowledge-vector frames and shape them into the Feast source layout."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from kar.data.schema import TIMESTAMP, to_utc
from kar.errors import FeatureStoreError

VECTOR_COLUMN = "vector"


def _utc_column(series: pl.Series) -> pl.Series:
    dtype = series.dtype
    if not isinstance(dtype, pl.Datetime):
        raise FeatureStoreError(f"column 'event_timestamp' must be a datetime, got {dtype}")
    if dtype.time_zone is None:
        series = series.dt.replace_time_zone("UTC")
    return series.dt.convert_time_zone("UTC").cast(TIMESTAMP)


def prepare_vectors(
    frame: pl.DataFrame,
    *,
    kind: str,
    join_key: str,
    feature: str,
    dim: int,
    default_timestamp: datetime,
    created: datetime,
) -> pl.DataFrame:
    """Check one frame of vectors and return it as (join_key, feature, event_timestamp, created).

    ``frame`` has ``entity_id`` or ``join_key``, a ``vector`` (or ``feature``) list column and
    optionally ``event_timestamp`` (per row; nulls take ``default_timestamp``). Raises
    FeatureStoreError naming the entity id and field of the first bad row.
    """
    id_col = join_key if join_key in frame.columns else "entity_id"
    vec_col = feature if feature in frame.columns else VECTOR_COLUMN
    for col, label in ((id_col, f"'{join_key}' or 'entity_id'"), (vec_col, f"'{VECTOR_COLUMN}'")):
        if col not in frame.columns:
            raise FeatureStoreError(
                f"{kind} vectors: column {label} missing (columns: {frame.columns})"
            )
    ids = frame[id_col]
    if ids.dtype != pl.Utf8:
        ids = ids.cast(pl.Utf8)
    if ids.null_count():
        row = int(ids.is_null().arg_max() or 0) + 1
        raise FeatureStoreError(f"{kind} vectors: row {row}: field {id_col!r} is null")
    vectors = frame[vec_col]
    if not isinstance(vectors.dtype, pl.List | pl.Array):
        raise FeatureStoreError(
            f"{kind} vectors: field {vec_col!r} must be a list of floats, got {vectors.dtype}"
        )
    if isinstance(vectors.dtype, pl.Array):
        vectors = vectors.arr.to_list()
    lengths = vectors.list.len().fill_null(-1)
    bad = (lengths != dim).arg_true()
    if bad.len():
        i = int(bad[0])
        got = "null" if lengths[i] < 0 else f"dimension {lengths[i]}"
        raise FeatureStoreError(
            f"{kind} {ids[i]!r}: field {vec_col!r} has {got}, expected dimension {dim}"
        )
    try:
        matrix = vectors.cast(pl.List(pl.Float32)).list.to_array(dim).to_numpy()
    except Exception as exc:
        raise FeatureStoreError(f"{kind} vectors: field {vec_col!r} is not numeric: {exc}") from exc
    matrix = np.asarray(matrix, dtype=np.float32).reshape(len(ids), dim)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise FeatureStoreError(
            f"{kind} {ids[i]!r}: field {vec_col!r} contains NaN, infinity or null values"
        )
    if "event_timestamp" in frame.columns:
        stamps = _utc_column(frame["event_timestamp"]).fill_null(to_utc(default_timestamp))
    else:
        stamps = pl.Series("event_timestamp", [to_utc(default_timestamp)] * len(ids), TIMESTAMP)
    out = pl.DataFrame(
        {
            join_key: ids,
            feature: pl.Series(feature, matrix).cast(pl.List(pl.Float32)),
            "event_timestamp": stamps,
        }
    ).with_columns(created=pl.lit(to_utc(created), dtype=TIMESTAMP))
    dup = out.select(join_key, "event_timestamp").is_duplicated().arg_true()
    if dup.len():
        i = int(dup[0])
        raise FeatureStoreError(
            f"{kind} {ids[i]!r}: field 'event_timestamp' repeats "
            f"{out['event_timestamp'][i]} in one publish (one vector per id and time)"
        )
    return out
