"""Publish knowledge vectors: new Parquet part files, feast apply, materialize (or push).

In a repo with ``knowledge_codes`` on, every row also carries the vector's k-means code
(``<entity>_knowledge_code``, Int64 1..k, null when the entity has none): taken from a
``code`` column of the frame, or assigned with ``codebooks`` (:mod:`kar.adaptor.codes`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from kar.data.schema import to_utc
from kar.errors import FeatureStoreError, KarError
from kar.features.repo import (
    ITEM_CODE,
    ITEM_FEATURE,
    ITEM_VIEW,
    USER_CODE,
    USER_FEATURE,
    USER_VIEW,
    apply_repo,
    feature_store,
    read_settings,
    update_lineage,
)
from kar.features.stores import check_online_store
from kar.features.vectors import prepare_vectors

if TYPE_CHECKING:
    from kar.adaptor.codes import KnowledgeCodebooks

_SIDES = (
    ("user", "user_id", USER_VIEW, USER_FEATURE),
    ("item", "item_id", ITEM_VIEW, ITEM_FEATURE),
)
CODE_FIELDS = {"user": USER_CODE, "item": ITEM_CODE}
CODE_COLUMN = "code"


def _codes_column(kind: str, frame: pl.DataFrame, ids: pl.Series) -> pl.Series:
    """The frame's code column (``<kind>_knowledge_code`` or ``code``) checked, as Int64;
    all null when the frame has none."""
    name = CODE_FIELDS[kind]
    col = name if name in frame.columns else CODE_COLUMN if CODE_COLUMN in frame.columns else None
    if col is None:
        return pl.Series(name, [None] * frame.height, dtype=pl.Int64)
    codes = frame[col]
    if not (codes.dtype.is_integer() or codes.dtype == pl.Null):
        raise FeatureStoreError(
            f"{kind} vectors: field {col!r} must hold integer codes, got {codes.dtype}"
        )
    codes = codes.cast(pl.Int64)
    bad = (codes < 1).fill_null(False).arg_true()
    if bad.len():
        i = int(bad[0])
        raise FeatureStoreError(
            f"{kind} {ids[i]!r}: field {col!r} is {codes[i]}; codes are 1..k (null for none)"
        )
    return codes.alias(name)


def prepare_knowledge(
    kind: str,
    frame: pl.DataFrame,
    *,
    dim: int,
    codes: bool,
    default_timestamp: datetime,
    created: datetime,
    codebooks: KnowledgeCodebooks | None = None,
) -> pl.DataFrame:
    """Validate one side's frame into the built-in view's rows (see :func:`publish`).

    ``codes``: the repo's views have the code field; the rows then carry it: the frame's
    code column, else the nearest centroid of ``codebooks``, else null. A code column sent
    to a repo without the field is an error.
    """
    key, feature = ("user_id", USER_FEATURE) if kind == "user" else ("item_id", ITEM_FEATURE)
    out = prepare_vectors(
        frame,
        kind=kind,
        join_key=key,
        feature=feature,
        dim=dim,
        default_timestamp=default_timestamp,
        created=created,
    )
    if not codes:
        for col in (CODE_FIELDS[kind], CODE_COLUMN):
            if col in frame.columns:
                raise FeatureStoreError(
                    f"{kind} vectors: field {col!r} given, but the repository's views have no "
                    "code field (init_feature_repo(knowledge_codes=True) or enable_codes)"
                )
        return out
    if codebooks is not None and not {CODE_FIELDS[kind], CODE_COLUMN} & set(frame.columns):
        vectors = out.select(pl.col(key).alias("entity_id"), pl.col(feature).alias("vector"))
        try:
            code = codebooks.codebook(kind).assign(vectors, kind)["code"].alias(CODE_FIELDS[kind])
        except KarError as exc:
            raise FeatureStoreError(
                f"{kind} vectors: cannot assign knowledge codes: {exc}"
            ) from exc
    else:
        code = _codes_column(kind, frame, out[key])
    return out.select(key, feature, code, "event_timestamp", "created")


@dataclass
class PublishReport:
    """What a publish wrote, and the seconds each step took."""

    users: int = 0
    items: int = 0
    files: list[Path] = field(default_factory=list)
    materialized: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    reused: int = 0  # of ``files``: written by an earlier run of the same publish, kept
    lineage: dict[str, str] = field(default_factory=dict)  # the views' lineage after it

    def summary(self) -> str:
        steps = ", ".join(f"{step} {sec:.1f} s" for step, sec in self.seconds.items())
        online = "materialised online" if self.materialized else "offline only"
        parts = f"{len(self.files) - self.reused} new Parquet partition(s)"
        if self.reused:
            parts += f" and {self.reused} already written by an earlier run (reused)"
        return f"{self.users} user and {self.items} item vectors in {parts}, {online} ({steps})"


def _validated(
    repo: Path,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    event_timestamp: datetime | None,
    codebooks: KnowledgeCodebooks | None = None,
) -> dict[str, pl.DataFrame]:
    settings = read_settings(repo)
    dim, codes = int(settings["vector_dim"]), bool(settings.get("knowledge_codes", False))
    if codebooks is not None and not codes:
        raise FeatureStoreError(
            f"codebooks given, but the views of {repo} have no code field "
            "(init_feature_repo(knowledge_codes=True) or enable_codes)"
        )
    now = datetime.now(UTC)
    default_ts = to_utc(event_timestamp) if event_timestamp is not None else now
    frames: dict[str, pl.DataFrame] = {}
    for (kind, _key, view, _feature), frame in zip(_SIDES, (users, items), strict=True):
        if frame is not None and frame.height:
            frames[view] = prepare_knowledge(
                kind,
                frame,
                dim=dim,
                codes=codes,
                default_timestamp=default_ts,
                created=now,
                codebooks=codebooks,
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
    codebooks: KnowledgeCodebooks | None = None,
) -> PublishReport:
    """Publish user and item vectors to the repo's Feast store.

    Frames: ``user_id``/``item_id`` (or ``entity_id``), ``vector`` (list of floats, the
    repo's ``vector_dim``), optional ``event_timestamp`` per row (e.g. the user's as_of;
    default ``event_timestamp`` or now), optional ``code`` (Int64 1..k; repos with
    knowledge codes only). ``codebooks`` assigns the codes of frames without one.
    Everything is validated before anything is written. ``lineage`` (prompt_version, llm,
    encoder, adaptor) updates the views' tags.
    """
    repo = Path(repo)
    report = PublishReport()
    t = time.perf_counter()
    frames = _validated(repo, users, items, event_timestamp, codebooks)
    report.seconds["validate"] = time.perf_counter() - t
    defaulted = event_timestamp is None and not any(
        f is not None and "event_timestamp" in f.columns for f in (users, items)
    )
    if lineage:
        report.lineage = update_lineage(repo, lineage)
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
        part, rows, new = _write_part(repo, view, frame, defaulted_ts=defaulted_ts)
        report.files.append(part)
        report.reused += int(not new)
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
    *,
    codebooks: KnowledgeCodebooks | None = None,
) -> int:
    """Write vectors (and codes, as in :func:`publish`) to the online store only, through
    the push sources (refresh path).

    The offline side is not touched: call ``publish(..., materialize=False)`` for it.
    Returns the number of rows pushed.
    """
    from feast.data_source import PushMode

    frames = _validated(Path(repo), users, items, event_timestamp, codebooks)
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
