"""Point-in-time training sets from the offline store (DuckDB over the Parquet parts)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kar.data.schema import TIMESTAMP
from kar.errors import FeatureStoreError
from kar.features.repo import FEATURE_SERVICE, ITEM_CODE, USER_CODE, feature_store

_ROW = "__kar_row"
REQUIRED = ("user_id", "item_id", "event_timestamp")


def training_set(
    repo: Path, entity_df: pl.DataFrame, features: str | list[str] = FEATURE_SERVICE
) -> pl.DataFrame:
    """Join each row of ``entity_df`` (user_id, item_id, event_timestamp, + any columns) with
    the vectors valid at its event_timestamp. Same rows, same order; vectors as list[f32],
    null where no vector existed yet; in a repo with knowledge codes, also
    ``user_knowledge_code`` / ``item_knowledge_code`` (Int64, null where none). The default
    service also carries the on-demand ``user_item_knowledge_dot`` / ``_cosine`` (Float64,
    0 where either vector is missing; :mod:`kar.features.affinity`) once both kinds are
    published. ``features``: a feature service name or feature refs (e.g.
    ``knowledge_affinity:user_item_knowledge_dot``).
    """
    missing = [c for c in REQUIRED if c not in entity_df.columns]
    if missing:
        raise FeatureStoreError(
            f"entity_df lacks column(s) {missing} (columns: {entity_df.columns})"
        )
    if _ROW in entity_df.columns:
        raise FeatureStoreError(f"entity_df must not have a column named {_ROW!r}")
    ts = entity_df["event_timestamp"]
    if not isinstance(ts.dtype, pl.Datetime):
        raise FeatureStoreError(
            f"entity_df field 'event_timestamp' must be a datetime, got {ts.dtype}"
        )
    if ts.null_count():
        row = int(ts.is_null().arg_max() or 0) + 1
        raise FeatureStoreError(f"entity_df row {row}: field 'event_timestamp' is null")
    if ts.dtype.time_zone is None:
        ts = ts.dt.replace_time_zone("UTC")
    frame = entity_df.with_columns(
        ts.dt.convert_time_zone("UTC").cast(TIMESTAMP).alias("event_timestamp"),
        pl.col("user_id").cast(pl.Utf8),
        pl.col("item_id").cast(pl.Utf8),
        pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW),
    )
    if frame.height == 0:
        raise FeatureStoreError("entity_df is empty")
    store = feature_store(repo)
    refs = store.get_feature_service(features) if isinstance(features, str) else features
    try:
        job = store.get_historical_features(entity_df=frame.to_pandas(), features=refs)
        result = pl.from_arrow(job.to_arrow())
    except Exception as exc:
        raise FeatureStoreError(f"get_historical_features failed in {repo}: {exc}") from exc
    assert isinstance(result, pl.DataFrame)
    if result.height != frame.height:
        raise FeatureStoreError(
            f"offline store returned {result.height} rows for {frame.height} entity rows"
        )
    extra = [c for c in result.columns if c not in frame.columns]
    result = result.sort(_ROW).select([*entity_df.columns, *extra])
    return result.with_columns(
        pl.col(c).cast(pl.List(pl.Float32) if isinstance(result[c].dtype, pl.List) else pl.Int64)
        for c in extra
        if isinstance(result[c].dtype, pl.List) or c in (USER_CODE, ITEM_CODE)
    )
