"""Issue 30's kill-and-resume faults: a real ``kar`` process (generate, encode, publish,
refresh) is SIGKILLed once it has made progress, then the stage is run again. Checked:
every answer stored exactly once, rows written before the kill unchanged, the rerun asks
the LLM only for what is missing, the vector cache is reused, Feast's offline and online
data complete and without duplicates. Real SmolLM2, MiniLM, adaptor, SQLite and Feast;
one small demo project, generated once and copied for each stage."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import kar
from kar.project import ProjectFolder

pytestmark = pytest.mark.slow

KAR = str(Path(sys.executable).parent / "kar")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
LIMIT = 4  # prompts per kind
KEY = "entity_type, entity_id, kind, prompt_hash, model, sampling_key"


# -- helpers ------------------------------------------------------------------------------


def _db(root: Path) -> Path:
    return root / "artifacts" / "knowledge.db"


def _count(root: Path) -> int:
    """Stored answers, read as another process would (0 before the store exists)."""
    if not _db(root).exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{_db(root)}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM knowledge").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def _answers(root: Path, per_entity: int = 1) -> dict[tuple, tuple]:
    """Every stored answer: call key -> (row id, answer, created_at). Fails on a key stored
    twice, or an entity and kind answered under more than ``per_entity`` prompt hashes (a
    prompt that changed between the killed run and the rerun would be asked again)."""
    with closing(sqlite3.connect(_db(root))) as conn:
        rows = conn.execute(f"SELECT {KEY}, id, answer, created_at FROM knowledge").fetchall()
    keys = [row[:6] for row in rows]
    assert len(keys) == len(set(keys)), "a call key is stored twice"
    entities = Counter(key[:3] for key in keys)
    assert max(entities.values(), default=0) <= per_entity, "an entity and kind asked again"
    return {row[:6]: row[6:] for row in rows}


def _kill_when(
    args: list[str], ready: Callable[[int], bool], log: Path, timeout: float = 300
) -> None:
    """Start ``kar ARGS``, SIGKILL it as soon as ``ready(pid)`` holds, and check it died so."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([KAR, *args], stdout=out, stderr=subprocess.STDOUT, env=ENV)
        try:
            deadline = time.monotonic() + timeout
            while not ready(proc.pid):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"`kar {args[0]}` ({proc.returncode}) ended or stalled before "
                                f"the kill point:\n{log.read_text()[-3000:]}")  # fmt: skip
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:  # a failed wait: never leave it running
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def _copy(src: Path, dest: Path) -> ProjectFolder:
    """A copy of a project; a published one's registry is re-pointed at the copy's files."""
    shutil.copytree(src, dest)
    if (dest / "feature_repo" / "data" / "registry.db").exists():
        from kar.features import apply_repo

        apply_repo(dest / "feature_repo")
    return ProjectFolder.load(dest)


def _opens(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


# -- generate -----------------------------------------------------------------------------


@dataclass
class Generated:
    root: Path
    at_kill: dict[tuple, tuple]  # the store right after the kill
    reports: dict  # the rerun's GenerationReports, per kind


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Generated:
    """A demo project whose `kar generate` was killed after its first saved batch, then rerun."""
    import torch

    from kar.pipeline import init_project, run_generate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("faults") / "generated"
    project = init_project(root, n_users=10)
    gen = project.settings.generation
    gen.max_new_tokens_user = gen.max_new_tokens_item = 12
    gen.truncated, gen.max_retries, gen.batch_size = "accept", 0, 2  # one call per prompt
    project.save()
    args = ["generate", "-p", str(root), "--limit", str(LIMIT)]
    _kill_when(args, lambda _: _count(root) >= 2, root.parent / "generate.log")
    at_kill = _answers(root)
    reports = run_generate(ProjectFolder.load(root), limit=LIMIT, progress=False)
    return Generated(root, at_kill, reports)


def test_killed_generate_resumes_asking_only_the_missing_prompts(generated: Generated) -> None:
    after = _answers(generated.root)  # each key once, each entity and kind once
    assert 2 <= len(generated.at_kill) < 2 * LIMIT  # killed with work done and work left
    assert len(after) == 2 * LIMIT  # nothing lost
    for key, row in generated.at_kill.items():  # written before the kill: untouched
        assert after[key] == row
    reports = generated.reports.values()
    assert sum(r.skipped_done for r in reports) == len(generated.at_kill)
    assert sum(r.llm_calls for r in reports) == 2 * LIMIT - len(generated.at_kill)
    assert sum(r.answered_ok + r.flagged for r in reports) == 2 * LIMIT - len(generated.at_kill)


# -- encode -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(generated: Generated, tmp_path_factory) -> Path:
    """The generated project encoded and trained (not yet published)."""
    from kar.pipeline import run_encode, run_train

    root = tmp_path_factory.mktemp("faults") / "trained"
    project = _copy(generated.root, root)
    run_encode(project, progress=False)
    run_train(project, progress=False)
    return root


def _cache_rows(path: Path) -> dict[str, bytes]:
    with closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT text_hash, vector FROM vectors").fetchall())


def _cached(path: Path) -> int:
    """Cached vectors, read as another process would."""
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])


def test_killed_encode_reuses_the_cached_vectors(trained: Path, tmp_path: Path) -> None:
    from kar.encoding import encode_knowledge
    from kar.generation import KnowledgeStore
    from kar.pipeline import make_encoder, run_encode

    project = _copy(trained, tmp_path / "p")
    project.settings.encoding.batch_size = 1  # each text its own batch, cached as it is done
    project.save()
    cache = project.vector_cache_path
    full = _cache_rows(cache)
    dropped = sorted(full)[2:]  # as if an earlier encode had cached only two texts
    with closing(sqlite3.connect(cache)) as conn, conn:
        conn.executemany("DELETE FROM vectors WHERE text_hash = ?", [(h,) for h in dropped])
    kept = _cache_rows(cache)
    assert len(kept) == len(full) - len(dropped) == 2 and len(dropped) >= 4

    # killed once `kar encode` has cached its first batch
    args = ["encode", "-p", str(project.root)]
    _kill_when(args, lambda _: _cached(cache) > len(kept), tmp_path / "encode.log")
    after_kill = _cache_rows(cache)
    assert len(kept) < len(after_kill) < len(full)  # cached batch by batch, killed midway
    assert {h: after_kill[h] for h in kept} == kept  # the kill damaged no cached vector

    answers = KnowledgeStore(project.knowledge_store_url).answers(scenario="demo")
    encoder = make_encoder(project)  # what run_encode uses
    encode_knowledge(answers, encoder)
    stats = encoder.last_stats
    assert (stats.hits, stats.misses) == (len(after_kill), len(full) - len(after_kill))
    rerun = run_encode(project, progress=False)
    assert rerun.users.height + rerun.items.height == len(full)
    final = _cache_rows(cache)
    assert final.keys() == full.keys()  # every text once (the key is the text's hash)
    assert {h: final[h] for h in kept} == kept


# -- publish ------------------------------------------------------------------------------


@dataclass
class Published:
    root: Path
    parts_at_kill: list[Path]
    summary: str
    reused: int


def _parts(root: Path) -> list[Path]:
    return sorted((root / "feature_repo" / "data").glob("*/part-*.parquet"))


@pytest.fixture(scope="module")
def published(trained: Path, tmp_path_factory) -> Published:
    """The trained project's `kar publish` killed once it wrote a part file, then rerun."""
    root = tmp_path_factory.mktemp("faults") / "published"
    _copy(trained, root)
    _kill_when(["publish", "-p", str(root)], lambda _: bool(_parts(root)), root.parent / "pub.log")
    parts_at_kill = _parts(root)
    report = kar.Project(root).publish()
    return Published(root, parts_at_kill, report.summary(), report.reused)


def test_killed_publish_leaves_feast_complete_without_duplicates(published: Published) -> None:
    root = published.root
    assert published.parts_at_kill and set(published.parts_at_kill) <= set(_parts(root))
    assert len(_parts(root)) == 2  # one per view: the killed run's part was reused
    new = 2 - published.reused
    assert published.reused >= 1
    assert f"{new} new Parquet partition(s) and {published.reused} already written" in (
        published.summary
    )
    project = kar.Project(root)
    folder = project.folder
    users = pl.read_parquet(folder.knowledge_dir / "user_knowledge.parquet")
    items = pl.read_parquet(folder.knowledge_dir / "item_knowledge.parquet")
    sides = (("user_knowledge", "user_id", users), ("item_knowledge", "item_id", items))
    for view, key, frame in sides:  # every vector once, none lost, none twice
        offline = pl.read_parquet(folder.feature_repo / "data" / view / "*.parquet")
        assert sorted(offline[key].to_list()) == sorted(frame["entity_id"].to_list())

    reader = project.online()
    item_ids = items["entity_id"].to_list()
    expected_items = np.asarray(items["vector"].to_list(), dtype=np.float32)
    for user, vector in zip(users["entity_id"], users["vector"], strict=True):
        batch = reader.get(user, item_ids)
        assert not batch.user_missing and not batch.items_missing.any()
        np.testing.assert_allclose(batch.user, np.asarray(vector), rtol=1e-6)
        np.testing.assert_allclose(batch.items, expected_items, rtol=1e-6)

    rows = project.split.test.select(
        "user_id", "item_id", pl.col("timestamp").alias("event_timestamp")
    )
    frame = project.training_set(rows)
    assert frame.height == rows.height  # no row lost or doubled by the join
    known = frame.filter(pl.col("user_id").is_in(users["entity_id"].to_list()))
    assert known.height and known["user_knowledge_vector"].null_count() == 0
    by_user = dict(zip(users["entity_id"], users["vector"], strict=True))
    for user, vector in known.select("user_id", "user_knowledge_vector").iter_rows():
        np.testing.assert_allclose(vector, by_user[user], rtol=1e-6)


def test_kar_yaml_online_store_edit_takes_effect_at_publish(
    published: Published, tmp_path: Path
) -> None:
    from kar.errors import FeatureStoreError
    from kar.refresh import refresh

    project = _copy(published.root, tmp_path / "p")
    fs = project.settings.features
    fs.project, fs.online_store = "kar_moved", {"type": "sqlite", "path": "data/online_v2.db"}
    project.save()
    with pytest.raises(FeatureStoreError, match="run `kar publish` first"):
        refresh(ProjectFolder.load(project.root))  # would push a few rows to an empty store
    moved = kar.Project(project.root)
    moved.publish()
    assert (project.feature_repo / "data" / "online_v2.db").exists()
    users = pl.read_parquet(project.knowledge_dir / "user_knowledge.parquet")
    batch = moved.online().get(users["entity_id"][0], [])
    np.testing.assert_allclose(batch.user, np.asarray(users["vector"][0]), rtol=1e-6)


# -- refresh ------------------------------------------------------------------------------


def _append_events(root: Path, user: str, start: datetime, n: int = 2) -> datetime:
    lines = [
        f"{user},f{107 + i * 7:03d},{start + timedelta(hours=i):%Y-%m-%dT%H:%M:%SZ},{4 + i % 2}\n"
        for i in range(n)
    ]
    with open(root / "data" / "interactions.csv", "a") as f:
        f.writelines(lines)
    return start + timedelta(hours=n - 1)


def test_killed_refresh_resumes_its_generation(published: Published, tmp_path: Path) -> None:
    from kar.generation import KnowledgeStore
    from kar.refresh import RefreshState, knowledge_time, refresh

    project = _copy(published.root, tmp_path / "p")
    project.settings.generation.batch_size = 1  # each refreshed answer saved on its own
    project.save()
    assert refresh(project).bootstrap
    users = sorted({key[1] for key in _answers(project.root) if key[0] == "user"})[:2]
    last = _append_events(project.root, users[0], datetime(2030, 3, 1, tzinfo=UTC))
    last = _append_events(project.root, users[1], last + timedelta(hours=1))
    before = _answers(project.root)

    args = ["refresh", "-p", str(project.root)]
    _kill_when(args, lambda _: _count(project.root) > len(before), tmp_path / "refresh.log")
    at_kill = _answers(project.root, per_entity=2)  # a refreshed user: old and new answer
    state = RefreshState(KnowledgeStore(project.knowledge_store_url))
    source = f"demo:{project.settings.dataset.path}"
    assert state.pending(source) is not None and state.watermark(source) < last

    resumed = refresh(ProjectFolder.load(project.root))
    assert resumed.resumed and resumed.users == 2
    new = len(at_kill) - len(before)
    assert 1 <= new <= 2 and resumed.llm_calls == 2 - new  # only the prompts not answered
    after = _answers(project.root, per_entity=2)
    assert len(after) == len(before) + 2
    assert all(after[key] == row for key, row in at_kill.items())
    assert state.pending(source) is None and state.watermark(source) == last

    rows = pl.read_parquet(project.feature_repo / "data" / "user_knowledge" / "*.parquet")
    assert rows.select("user_id", "event_timestamp").is_duplicated().sum() == 0
    refreshed = rows.filter(pl.col("event_timestamp") == knowledge_time(last))
    assert sorted(refreshed["user_id"].to_list()) == users
    reader = kar.Project(project.root).online()
    for user, vector in refreshed.select("user_id", "user_knowledge_vector").iter_rows():
        np.testing.assert_allclose(reader.get(user, []).user, vector, rtol=1e-6)
