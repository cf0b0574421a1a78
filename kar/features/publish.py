"""Publish knowledge vectors: new Parquet part files, feast apply, materialize (or push)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from kar.errors import FeatureStoreError
from kar.features.repo import (
    ITEM_FEATURE,
    ITEM_VIEW,
    USER_FEATURE,
    USER_VIEW,
    apply_repo,
    feature_store,
    read_settings,
    update_lineage,
)
from kar.features.vectors import prepare_vectors, to_utc

_SIDES = (
    ("user", "user_id", USER_VIEW, USER_FEATURE),
    ("item", "item_id", ITEM_VIEW, ITEM_FEATURE),
)


@dataclass
class PublishReport:
    """What a publish wrote, and the seconds each step took."""

    users: int = 0
    items: int = 0
    files: list[Path] = field(default_factory=list)
    materialized: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        steps = ", ".join(f"{step} {sec:.1f} s" for step, sec in self.seconds.items())
        online = "materialised online" if self.materialized else "offline only"
        return (
            f"{self.users} user and {self.items} item vectors in {len(self.files)} new "
            f"Parquet partition(s), {online} ({steps})"
        )


def _validated(
    repo: Path,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    event_timestamp: datetime | None,
) -> dict[str, pl.DataFrame]:
    dim = int(read_settings(repo)["vector_dim"])
    now = datetime.now(UTC)
    default_ts = to_utc(event_timestamp) if event_timestamp is not None else now
    frames: dict[str, pl.DataFrame] = {}
    for (kind, key, view, feature), frame in zip(_SIDES, (users, items), strict=True):
        if frame is not None and frame.height:
            frames[view] = prepare_vectors(
                frame,
                kind=kind,
                join_key=key,
                feature=feature,
                dim=dim,
                default_timestamp=default_ts,
                created=now,
            )
    return frames


def _write_part(repo: Path, view: str, frame: pl.DataFrame) -> Path:
    """Write one new part file atomically (temp name outside the *.parquet glob, then rename)."""
    folder = Path(repo) / "data" / view
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
    tmp = folder / f".{name}.tmp"
    frame.write_parquet(tmp)
    return tmp.rename(folder / f"{name}.parquet")


def publish(
    repo: Path,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    event_timestamp: datetime | None = None,
    materialize: bool = True,
    *,
    lineage: Mapping[str, str] | None = None,
) -> PublishReport:
    """Publish user and item vectors to the repo's Feast store.

    Frames: ``user_id``/``item_id`` (or ``entity_id``), ``vector`` (list of floats, the
    repo's ``vector_dim``), optional ``event_timestamp`` per row (e.g. the user's as_of;
    default ``event_timestamp`` or now). Everything is validated before anything is written.
    ``lineage`` (prompt_version, llm, encoder, adaptor) updates the views' tags.
    """
    repo = Path(repo)
    report = PublishReport()
    t = time.perf_counter()
    frames = _validated(repo, users, items, event_timestamp)
    report.seconds["validate"] = time.perf_counter() - t

    t = time.perf_counter()
    if lineage:
        update_lineage(repo, lineage)
    for view, frame in frames.items():
        report.files.append(_write_part(repo, view, frame))
    report.users = frames[USER_VIEW].height if USER_VIEW in frames else 0
    report.items = frames[ITEM_VIEW].height if ITEM_VIEW in frames else 0
    report.seconds["write"] = time.perf_counter() - t

    t = time.perf_counter()
    store = apply_repo(repo)
    report.seconds["apply"] = time.perf_counter() - t

    if materialize and frames:
        t = time.perf_counter()
        start = min(f["event_timestamp"].min() for f in frames.values())
        latest = max(f["event_timestamp"].max() for f in frames.values())
        # End at now or later: a newer vector already stored for an entity wins over an older one.
        end = max(latest + timedelta(microseconds=1), datetime.now(UTC))
        try:
            store.materialize(start, end, feature_views=list(frames))
        except Exception as exc:
            raise FeatureStoreError(f"materialize failed in {repo}: {exc}") from exc
        report.materialized = True
        report.seconds["materialize"] = time.perf_counter() - t
    return report


def push_online(
    repo: Path,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    event_timestamp: datetime | None = None,
) -> int:
    """Write vectors to the online store only, through the push sources (refresh path).

    The offline side is not touched: call ``publish(..., materialize=False)`` for it.
    Returns the number of rows pushed.
    """
    from feast.data_source import PushMode

    frames = _validated(Path(repo), users, items, event_timestamp)
    store = feature_store(Path(repo))
    rows = 0
    for view, frame in frames.items():
        try:
            store.push(f"{view}_push", frame.to_pandas(), to=PushMode.ONLINE)
        except Exception as exc:
            raise FeatureStoreError(f"push to {view}_push failed in {repo}: {exc}") from exc
        rows += frame.height
    return rows
