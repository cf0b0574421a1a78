"""Publish knowledge vectors: new Parquet part files, feast apply, materialize (or push)."""

from __future__ import annotations

import time
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
from kar.features.stores import check_online_store
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


def _content_digest(frame: pl.DataFrame) -> str:
    """Digest of ids, vectors and timestamps (not ``created``): the identity of a publish."""
    import hashlib

    body = frame.drop("created").sort(frame.columns[0], "event_timestamp")
    return hashlib.sha256(body.hash_rows(seed=0).to_numpy().tobytes()).hexdigest()[:16]


def _latest_part(folder: Path) -> Path | None:
    parts = sorted(folder.glob("part-*.parquet"))
    return parts[-1] if parts else None


def _write_part(
    repo: Path, view: str, frame: pl.DataFrame, *, defaulted_ts: bool = False
) -> tuple[Path, pl.DataFrame, bool]:
    """Write one new part file atomically (temp name outside the *.parquet glob, then rename).

    A retry of the same publish (same ids and vectors, and the same timestamps unless they
    defaulted to now) finds its part as the folder's newest and writes nothing new; returns
    (part, the rows it holds, whether it was written now).
    """
    folder = Path(repo) / "data" / view
    folder.mkdir(parents=True, exist_ok=True)
    keyed = frame.with_columns(event_timestamp=pl.lit(0)) if defaulted_ts else frame
    digest = _content_digest(keyed)
    latest = _latest_part(folder)
    if latest is not None and latest.stem.endswith(f"-{digest}"):
        return latest, pl.read_parquet(latest), False
    name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{digest}"
    tmp = folder / f".{name}.tmp"
    frame.write_parquet(tmp)
    return tmp.rename(folder / f"{name}.parquet"), frame, True


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
    defaulted = event_timestamp is None and not any(
        f is not None and "event_timestamp" in f.columns for f in (users, items)
    )
    if lineage:
        update_lineage(repo, lineage)
    report = publish_frames(repo, frames, materialize, defaulted_ts=defaulted, report=report)
    report.users = frames[USER_VIEW].height if USER_VIEW in frames else 0
    report.items = frames[ITEM_VIEW].height if ITEM_VIEW in frames else 0
    return report


def publish_frames(
    repo: Path,
    frames: Mapping[str, pl.DataFrame],
    materialize: bool = True,
    *,
    defaulted_ts: bool = False,
    report: PublishReport | None = None,
) -> PublishReport:
    """Write validated frames (view name -> prepared rows) as parts, apply, materialize.

    The online store is checked first (nothing is written when it is down). Retrying after
    a failure writes no duplicate part and re-materializes the same rows (idempotent).
    """
    repo = Path(repo)
    report = report or PublishReport()
    if materialize and frames:
        check_online_store(repo)
    t = time.perf_counter()
    written: dict[str, pl.DataFrame] = {}
    for view, frame in frames.items():
        part, rows, _new = _write_part(repo, view, frame, defaulted_ts=defaulted_ts)
        report.files.append(part)
        written[view] = rows
    report.seconds["write"] = time.perf_counter() - t

    t = time.perf_counter()
    store = apply_repo(repo)
    report.seconds["apply"] = time.perf_counter() - t

    if materialize and written:
        t = time.perf_counter()
        start = min(f["event_timestamp"].min() for f in written.values())
        latest = max(f["event_timestamp"].max() for f in written.values())
        # End at now or later: a newer vector already stored for an entity wins over an older one.
        end = max(latest + timedelta(microseconds=1), datetime.now(UTC))
        try:
            store.materialize(start, end, feature_views=list(written))
        except Exception as exc:
            raise FeatureStoreError(
                f"materialize failed in {repo}: {exc}; the offline part files are written — "
                "run the same publish again once the online store is back (no duplicates)"
            ) from exc
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
    check_online_store(Path(repo))
    store = feature_store(Path(repo))
    rows = 0
    for view, frame in frames.items():
        try:
            store.push(f"{view}_push", frame.to_pandas(), to=PushMode.ONLINE)
        except Exception as exc:
            raise FeatureStoreError(f"push to {view}_push failed in {repo}: {exc}") from exc
        rows += frame.height
    return rows
