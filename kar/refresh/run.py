"""Incremental refresh: only users with interactions after the watermark, and new items.

A run is planned (events after the watermark -> users to refresh; catalog items not yet
known -> items to cold-start), its plan recorded as pending, then executed stage by
stage: generate and encode are the full run's stages (``kar.pipeline.run_generate``,
``kar.pipeline.knowledge_rows``) on the plan's entities (a
:class:`kar.pipeline.Subset`), so collective knowledge and imported texts work as in a
full run (knowledge store: an answered call is never repeated), then adapt with the
trained adaptor (and assign each vector its knowledge code with the codebook saved at
publish, never refitted), write the offline part files (one name per run and view, so a
rerun finds them written), push online, and commit (run done, watermark moved, new items
known) in one transaction. Killed at any point, the next refresh resumes the pending
plan: no LLM call repeated, no row written twice, no event skipped.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from kar.errors import KarError
from kar.generation.imports import imported_since
from kar.pipeline import (
    StageContext,
    Subset,
    knowledge_rows,
    load_data,
    make_encoder,
    run_generate,
    time_split,
)
from kar.refresh.report import RefreshReport
from kar.refresh.state import PendingRun, RefreshState

if TYPE_CHECKING:
    from kar.data.schema import Dataset
    from kar.encoding import EntityVectors
    from kar.generation import KnowledgeStore
    from kar.project import ProjectFolder

# Test hook: name of a stage after which the process kills itself with SIGKILL.
FAULT_ENV = "KAR_REFRESH_KILL_AFTER"
STAGES = ("read", "generate", "encode", "adapt", "offline", "online", "commit")


def default_source(project: ProjectFolder) -> str:
    """The data source name of a project's interactions: ``<kind>:<path>``."""
    ds = project.settings.dataset
    return f"{ds.kind}:{ds.path}"


def knowledge_time(watermark: datetime) -> datetime:
    """When knowledge built from events up to ``watermark`` becomes valid.

    One microsecond later: the prompt sees history strictly before this instant (so the
    event at the watermark is included) and a training row at the watermark itself does
    not see knowledge built from its own label.
    """
    return watermark + timedelta(microseconds=1)


@contextmanager
def _stage(report: RefreshReport, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    report.seconds[name] = round(report.seconds.get(name, 0.0) + time.perf_counter() - start, 4)
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def plan_refresh(
    interactions: pl.DataFrame,
    catalog: list[str],
    watermark: datetime,
    known_items: set[str],
) -> tuple[list[str], list[str], int, datetime]:
    """(users with events after ``watermark``, items not in ``known_items``, events, new wm)."""
    events = interactions.filter(pl.col("timestamp") > watermark)
    users = sorted(set(events["user_id"].to_list()))
    new_wm = events["timestamp"].max() if events.height else watermark
    items = sorted(set(catalog) - known_items)
    return users, items, events.height, new_wm  # type: ignore[return-value]


def refresh(
    project: ProjectFolder,
    *,
    source: str | None = None,
    dataset: Dataset | None = None,
    initial_watermark: datetime | None = None,
    progress: bool = False,
) -> RefreshReport:
    """One incremental refresh of ``project`` from its interactions (or ``dataset``).

    The first refresh of a source only records the watermark (the latest event, or
    ``initial_watermark``) and the catalog: the full pipeline built the knowledge so far.
    """
    from kar.features.repo import require_project_stores
    from kar.generation import KnowledgeStore

    require_project_stores(project.feature_repo, project.settings.features)  # see its doc
    source = source or default_source(project)
    store = KnowledgeStore(project.knowledge_store_url)
    state = RefreshState(store)
    report = RefreshReport(source=source)
    with _stage(report, "read"):
        if dataset is None:
            dataset, _ = load_data(project)
        pending = state.pending(source)
        watermark = state.watermark(source)
        catalog = dataset.items["item_id"].to_list()
        if pending is None and watermark is None:
            start = initial_watermark or dataset.interactions["timestamp"].max()
            if start is None:
                raise KarError(f"source {source}: no interactions to start a watermark from")
            run = state.start(source, None, start, [], catalog, 0)
            report.bootstrap = True
        elif pending is None:
            assert watermark is not None
            users, items, events, new_wm = plan_refresh(
                dataset.interactions, catalog, watermark, state.known_items(source)
            )
            # texts imported (`kar knowledge import`) since the last run are re-published too
            new_users, new_items = imported_since(
                store, project.settings.scenario, state.last_started(source)
            )
            known_users = set(dataset.users["user_id"].to_list())
            users = sorted(set(users) | {u for u in new_users if u in known_users})
            items = sorted(set(items) | (set(new_items) & set(catalog)))
            run = state.start(source, watermark, new_wm, users, items, events)
        else:
            run = pending
            report.resumed = True
    if report.bootstrap:
        run.items = []  # nothing to compute; commit records the catalog as known
        report.run_id, report.new_watermark = run.run_id, _iso(run.new_watermark)
        state.commit(run, report.to_dict())
        run.items = catalog
        state.add_items(source, catalog)
        report.save(project.refresh_reports_dir)
        return report
    return execute_run(project, state, store, run, dataset, report, progress=progress)


def execute_run(
    project: ProjectFolder,
    state: RefreshState,
    store: KnowledgeStore,
    run: PendingRun,
    dataset: Dataset,
    report: RefreshReport,
    *,
    progress: bool = False,
) -> RefreshReport:
    """Carry out a recorded plan, stage by stage, and commit it."""
    report.run_id = run.run_id
    report.events, report.users, report.items = run.events, len(run.users), len(run.items)
    report.old_watermark, report.new_watermark = _iso(run.old_watermark), _iso(run.new_watermark)
    as_of = knowledge_time(run.new_watermark)
    subset = Subset(tuple(run.users), tuple(run.items), as_of)
    if run.users or run.items:
        with _stage(report, "generate"):
            _generate(project, store, dataset, subset, report, progress)
        with _stage(report, "encode"):
            encoded = _encode(project, store, subset, report)
        with _stage(report, "adapt"):
            users, items = _adapt(project, encoded, as_of)
        with _stage(report, "offline"):
            files, rows = write_offline(project.feature_repo, run, users, items)
            report.files, report.offline_rows = [str(f) for f in files], rows
        with _stage(report, "online"):
            from kar.errors import FeatureStoreError
            from kar.features import push_online

            try:
                report.online_rows = push_online(project.feature_repo, users, items)
            except FeatureStoreError as exc:
                reason = exc.__cause__ or exc
                raise FeatureStoreError(
                    f"refresh run {run.run_id}: the online push failed "
                    f"({type(reason).__name__}: {reason}); written so far: the knowledge "
                    f"store's answers and {report.offline_rows} offline rows in "
                    f"{', '.join(report.files)}; the online store has nothing new — start it "
                    "and run `kar refresh` again to finish this run (no LLM call is repeated, "
                    "no offline row is written twice)"
                ) from exc
    with _stage(report, "commit"):
        state.commit(run, report.to_dict())
    report.save(project.refresh_reports_dir)
    return report


def _generate(
    project: ProjectFolder,
    store: KnowledgeStore,
    dataset: Dataset,
    subset: Subset,
    report: RefreshReport,
    progress: bool,
) -> None:
    """``kar generate``'s stage on the run's entities (collective modes and imports included)."""
    context = StageContext(project, subset).keep(
        data=(dataset, time_split(project, dataset)), store=store
    )
    reports = run_generate(context, progress=progress)
    for result in reports.values():
        report.llm_calls += result.llm_calls
        report.prompt_tokens += result.prompt_tokens
        report.completion_tokens += result.completion_tokens
        report.flagged += result.flagged


def _encode(
    project: ProjectFolder, store: KnowledgeStore, subset: Subset, report: RefreshReport
) -> EntityVectors:
    """``kar encode``'s rows for the run's entities, encoded; their lineage in the report."""
    from kar.collective import source_counts
    from kar.encoding import encode_knowledge

    rows = knowledge_rows(project, store, subset)
    report.sources = source_counts(rows)
    return encode_knowledge(rows, make_encoder(project))


def _adapt(
    project: ProjectFolder, encoded: EntityVectors, as_of: datetime
) -> tuple[pl.DataFrame, pl.DataFrame]:
    from kar.adaptor import TrainedAdaptor

    if not project.adaptor_dir.exists():
        raise KarError(f"no trained adaptor in {project.adaptor_dir}: run `kar train` first")
    adaptor = TrainedAdaptor.load(project.adaptor_dir)
    users, items = adaptor.export(encoded.users, encoded.items)
    users, items = assign_codes(project, users, items)
    stamp = pl.lit(as_of, dtype=pl.Datetime("us", "UTC")).alias("event_timestamp")
    return users.with_columns(stamp), items.with_columns(stamp)


def assign_codes(
    project: ProjectFolder, users: pl.DataFrame, items: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Adapted vectors plus a ``code`` column from the codebook saved by ``kar publish``.

    Unchanged when the feature repo has no code field or no codebook was saved (codes
    switched off): the rows are then published without a code.
    """
    from kar.adaptor.codes import KnowledgeCodebooks
    from kar.features.repo import codes_enabled

    path = project.codebook_path
    if not codes_enabled(project.feature_repo) or not path.is_file():
        return users, items
    codebooks = KnowledgeCodebooks.load(path)
    return codebooks.with_codes("user", users), codebooks.with_codes("item", items)


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", source).strip("_")[:40]


def write_offline(
    repo: Path, run: PendingRun, users: pl.DataFrame, items: pl.DataFrame
) -> tuple[list[Path], int]:
    """One part file per view and run, named after the run: a rerun finds it and skips it.

    Written to a hidden temporary name and renamed, so a kill never leaves half a file
    where the offline store reads.
    """
    from kar.features.publishing import prepare_knowledge
    from kar.features.repo import ITEM_VIEW, USER_VIEW, read_settings

    settings = read_settings(repo)
    dim, codes = int(settings["vector_dim"]), bool(settings.get("knowledge_codes", False))
    files, rows = [], 0
    sides = (("user", USER_VIEW, users), ("item", ITEM_VIEW, items))
    for kind, view, frame in sides:
        if frame.height == 0:
            continue
        folder = Path(repo) / "data" / view
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-refresh-{_slug(run.source)}-{run.run_id:08d}"
        target = folder / f"{name}.parquet"
        if not target.exists():
            out = prepare_knowledge(
                kind,
                frame,
                dim=dim,
                codes=codes,
                default_timestamp=knowledge_time(run.new_watermark),
                created=run.started_at,
            )
            tmp = folder / f".{name}.tmp"
            out.write_parquet(tmp)
            tmp.rename(target)
        files.append(target)
        rows += pl.scan_parquet(target).select(pl.len()).collect().item()
    return files, rows
