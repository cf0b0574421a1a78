"""Incremental and streaming refresh on a small demo project: real SmolLM2, MiniLM,
adaptor, Feast and Redis; crashes are real SIGKILLs of a `kar refresh` subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from kar.project import ProjectFolder
from kar.refresh import RefreshState, knowledge_time, parse_interval, refresh
from kar.refresh.run import FAULT_ENV
from kar.refresh.stream import parse_event

KAR = str(Path(sys.executable).parent / "kar")


def test_parse_interval() -> None:
    assert parse_interval("1h") == 3600 and parse_interval("90s") == 90
    assert parse_interval("15m") == 900 and parse_interval("2") == 2
    with pytest.raises(Exception, match="unit"):
        parse_interval("soon")


def test_parse_event_names_the_bad_field() -> None:
    ok = parse_event(
        {b"user_id": b"u1", b"item_id": b"f1", b"timestamp": b"1700000000", b"rating": b"4"},
        {"f1"},
        4.0,
    )
    assert ok["label"] == 1 and ok["timestamp"] == datetime.fromtimestamp(1700000000, UTC)
    for fields, field in (
        ({"user_id": "u1", "item_id": "f1", "rating": "4"}, "timestamp"),
        ({"user_id": "u1", "item_id": "f1", "timestamp": "yesterday", "rating": "4"}, "timestamp"),
        ({"user_id": "u1", "item_id": "zz", "timestamp": "1", "rating": "4"}, "item_id"),
        ({"user_id": "u1", "item_id": "f1", "timestamp": "1", "rating": "x"}, "rating"),
    ):
        with pytest.raises(ValueError, match=field):
            parse_event(fields, {"f1"}, 4.0)


# -- a trained, published demo project --------------------------------------------------


@pytest.fixture(scope="module")
def base_project(tmp_path_factory) -> Path:
    import torch

    from kar.pipeline import init_project, run_encode, run_generate, run_publish, run_train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("refresh") / "base"
    project = init_project(root, n_users=10)
    gen = project.settings.generation
    gen.max_new_tokens_user = gen.max_new_tokens_item = 16
    gen.truncated = "accept"
    project.save()
    project = ProjectFolder.load(root)
    run_generate(project, limit=5, progress=False)
    run_encode(project, progress=False)
    run_train(project, progress=False)
    run_publish(project)
    return root


def _copy(base: Path, tmp_path: Path) -> ProjectFolder:
    from kar.features import apply_repo

    dest = tmp_path / "project"
    shutil.copytree(base, dest)
    apply_repo(dest / "feature_repo")  # the registry holds absolute source paths: re-point
    return ProjectFolder.load(dest)


def _known_users(project: ProjectFolder) -> list[str]:
    from kar.generation import KnowledgeStore

    answers = KnowledgeStore(project.knowledge_store_url).answers()
    return sorted(answers.filter(pl.col("entity_type") == "user")["entity_id"].to_list())


def _append_events(project: ProjectFolder, user: str, start: datetime, n: int = 2) -> datetime:
    lines = []
    for i in range(n):
        ts = start + timedelta(hours=i)
        lines.append(f"{user},f{107 + i * 7:03d},{ts:%Y-%m-%dT%H:%M:%SZ},{4 + i % 2}\n")
    with open(project.root / "data" / "interactions.csv", "a") as f:
        f.writelines(lines)
    return start + timedelta(hours=n - 1)


def _offline(project: ProjectFolder, view: str) -> pl.DataFrame:
    return pl.read_parquet(project.feature_repo / "data" / view / "*.parquet")


@pytest.mark.slow
def test_watermark_incremental_and_idempotent(base_project: Path, tmp_path: Path) -> None:
    from kar.features import OnlineKnowledge
    from kar.generation import KnowledgeStore

    project = _copy(base_project, tmp_path)
    first = refresh(project)
    assert first.bootstrap and first.llm_calls == 0
    state = RefreshState(KnowledgeStore(project.knowledge_store_url))
    assert state.watermark(first.source) == datetime.fromisoformat(first.new_watermark)

    user = _known_users(project)[0]
    last = _append_events(project, user, datetime(2030, 1, 1, tzinfo=UTC))
    with open(project.root / "data" / "items.csv", "a") as f:
        f.write("f999,A Film New To The Catalog,2031,Drama,Some Director\n")
    files_before = set((project.feature_repo / "data").rglob("*.parquet"))
    report = refresh(project)
    assert (report.events, report.users, report.items) == (2, 1, 1)
    assert report.llm_calls >= 2 and report.completion_tokens > 0
    assert report.offline_rows == 2 and report.online_rows == 2
    assert state.watermark(report.source) == last
    assert set(report.seconds) >= {"read", "generate", "encode", "adapt", "offline", "online"}
    assert len(set((project.feature_repo / "data").rglob("*.parquet")) - files_before) == 2
    users = _offline(project, "user_knowledge").filter(pl.col("user_id") == user)
    newest = users.sort("event_timestamp")[-1]
    assert newest["event_timestamp"][0] == knowledge_time(last)
    assert "f999" in _offline(project, "item_knowledge")["item_id"].to_list()
    online = OnlineKnowledge(project.feature_repo).get(user, ["f999"])
    assert not online.user_missing
    assert online.user.tolist() == pytest.approx(newest["user_knowledge_vector"][0].to_list())
    # the refreshed vector's code comes from the codebook `kar publish` saved
    from kar.adaptor.codes import CODEBOOK_FILE, KnowledgeCodebooks

    books = KnowledgeCodebooks.load(project.knowledge_dir / CODEBOOK_FILE)
    vector = pl.DataFrame({"entity_id": [user], "vector": newest["user_knowledge_vector"]})
    code = books.with_codes("user", vector)["code"][0]
    assert newest["user_knowledge_code"][0] == code == online.user_code >= 1
    assert state.reports(report.source)[-1]["users"] == 1
    assert (project.reports_dir / "refresh" / f"refresh-{report.run_id:08d}.json").exists()

    files = set((project.feature_repo / "data").rglob("*.parquet"))
    again = refresh(project)
    assert (again.llm_calls, again.users, again.items, again.offline_rows) == (0, 0, 0, 0)
    assert set((project.feature_repo / "data").rglob("*.parquet")) == files
    assert state.watermark(again.source) == last


@pytest.mark.slow
def test_point_in_time_sees_old_then_new_knowledge(base_project: Path, tmp_path: Path) -> None:
    from kar.features import training_set

    project = _copy(base_project, tmp_path)
    refresh(project)
    user = _known_users(project)[1]
    last = _append_events(project, user, datetime(2030, 2, 1, tzinfo=UTC))
    refresh(project)
    rows = _offline(project, "user_knowledge").filter(pl.col("user_id") == user)
    old = rows.sort("event_timestamp")["user_knowledge_vector"][0].to_list()
    new = rows.sort("event_timestamp")["user_knowledge_vector"][-1].to_list()
    assert old != new
    entity = pl.DataFrame(
        {
            "user_id": [user, user, user],
            "item_id": ["f107", "f107", "f107"],
            "event_timestamp": [last - timedelta(days=1), last, last + timedelta(days=1)],
        }
    ).with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))
    got = training_set(project.feature_repo, entity)["user_knowledge_vector"].to_list()
    assert got[0] == pytest.approx(old) and got[1] == pytest.approx(old)  # not its own label
    assert got[2] == pytest.approx(new)


@pytest.mark.slow
def test_killed_refresh_resumes_without_duplicates_or_gaps(
    base_project: Path, tmp_path: Path
) -> None:
    from kar.generation import KnowledgeStore

    project = _copy(base_project, tmp_path)
    refresh(project)
    users = _known_users(project)[:2]
    last = _append_events(project, users[0], datetime(2030, 3, 1, tzinfo=UTC))
    last = _append_events(project, users[1], last + timedelta(hours=1))
    env = {**os.environ, FAULT_ENV: "offline"}  # SIGKILL after the part files, before push
    killed = subprocess.run(
        [KAR, "refresh", "-p", str(project.root)], env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    state = RefreshState(KnowledgeStore(project.knowledge_store_url))
    source = f"demo:{project.settings.dataset.path}"
    assert state.pending(source) is not None and state.watermark(source) < last
    answers_after_kill = KnowledgeStore(project.knowledge_store_url).count()

    # More events arrive before the rerun: they are the next run's, not lost nor merged.
    later = _append_events(project, users[0], last + timedelta(days=1), n=1)
    resumed = refresh(project)
    assert resumed.resumed and resumed.llm_calls == 0 and resumed.users == 2
    assert KnowledgeStore(project.knowledge_store_url).count() == answers_after_kill
    assert state.watermark(source) == last
    following = refresh(project)
    assert not following.resumed and following.users == 1 and following.events == 1
    assert state.watermark(source) == later
    rows = _offline(project, "user_knowledge")
    assert rows.select("user_id", "event_timestamp").is_duplicated().sum() == 0
    refreshed = rows.filter(pl.col("event_timestamp") > datetime(2030, 1, 1, tzinfo=UTC))
    assert sorted(refreshed["user_id"].to_list()) == sorted([*users, users[0]])


# -- Redis Stream -------------------------------------------------------------------------


@pytest.fixture
def redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    yield client
    client.close()


@pytest.mark.slow
def test_stream_consumer_killed_before_ack_redelivers(
    base_project: Path, tmp_path: Path, redis_client
) -> None:
    from kar.generation import KnowledgeStore
    from kar.refresh.stream import StreamRefresher

    project = _copy(base_project, tmp_path)
    stream = f"kar-test:{uuid.uuid4().hex[:8]}"
    user = _known_users(project)[0]
    try:
        redis_client.xadd(
            stream,
            {
                "user_id": user,
                "item_id": "f107",
                "timestamp": "2030-05-01T10:00:00Z",
                "rating": "5",
            },
        )
        redis_client.xadd(
            stream, {"user_id": user, "item_id": "f114", "timestamp": "1903000000", "label": "0"}
        )
        redis_client.xadd(
            stream, {"user_id": user, "item_id": "f107", "timestamp": "not a time", "rating": "5"}
        )
        args = [KAR, "refresh", "stream", "-p", str(project.root), "--stream", stream]
        args += ["--batch-size", "10", "--wait-ms", "300", "--max-batches", "1"]
        env = {**os.environ, FAULT_ENV: "online"}  # killed after publishing, before the ack
        killed = subprocess.run(args, env=env, capture_output=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
        pending = redis_client.xpending(stream, "kar-refresh")
        assert pending["pending"] == 2  # the malformed one was dead-lettered and acked

        dead = redis_client.xrange(f"{stream}:dead")
        assert len(dead) == 1
        assert b"timestamp" in dead[0][1][b"reason"]
        assert dead[0][1][b"field:timestamp"] == b"not a time"

        calls_before = KnowledgeStore(project.knowledge_store_url).count()
        refresher = StreamRefresher(project, stream=stream, batch_size=10, wait_ms=100)
        batch = refresher.process_once()
        assert batch.read == 2 and batch.acked == 2
        assert [r.resumed for r in batch.runs] == [True]
        assert sum(r.llm_calls for r in batch.runs) == 0
        assert KnowledgeStore(project.knowledge_store_url).count() == calls_before
        assert redis_client.xpending(stream, "kar-refresh")["pending"] == 0
        assert refresher.process_once().runs == []  # nothing left, nothing redone

        rows = _offline(project, "user_knowledge")
        assert rows.select("user_id", "event_timestamp").is_duplicated().sum() == 0
        streamed = rows.filter(pl.col("event_timestamp") > datetime(2030, 1, 1, tzinfo=UTC))
        assert streamed["user_id"].to_list() == [user]
        latest = max(datetime(2030, 5, 1, 10, tzinfo=UTC), datetime.fromtimestamp(1903000000, UTC))
        assert streamed["event_timestamp"][0] == knowledge_time(latest)
    finally:
        redis_client.delete(stream, f"{stream}:dead")
