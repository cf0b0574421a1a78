"""Production stores on the real local servers: Redis online store, PostgreSQL SQL registry
and PostgreSQL online store, chosen in configuration only; same code path as SQLite.

Needs Redis at 127.0.0.1:6379 and PostgreSQL at 127.0.0.1:5432 (database ``test``, trust
auth); `.ci/run` starts them. Each test skips with a message when its server is down.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.errors import FeatureStoreError
from kar.features import OnlineKnowledge, init_feature_repo, publish, push_online
from kar.features.serving import KnowledgeServer
from kar.features.stores import check_online_store, describe_stores

PG_DB = "kar_feast_test"  # a database of its own: Feast's SQL registry creates its tables
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = {"type": "redis", "connection_string": "127.0.0.1:6379"}
DIM = 32
T0 = datetime(2024, 1, 1, tzinfo=UTC)
USERS = [f"u{i}" for i in range(15)]
ITEMS = [f"i{i}" for i in range(40)]


@pytest.fixture(scope="module")
def redis_up() -> None:
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at 127.0.0.1:6379 ({exc}); run .ci/run to start it")


@pytest.fixture(scope="module")
def pg_registry_url() -> str:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=2) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,))
            if exists.fetchone() is None:
                conn.execute(f"CREATE DATABASE {PG_DB}")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN} ({exc}); run .ci/run to start it")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DB}"


def _vectors() -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(7)
    users = rng.standard_normal((len(USERS), DIM)).astype(np.float32)
    items = rng.standard_normal((len(ITEMS), DIM)).astype(np.float32)
    return (
        pl.DataFrame({"user_id": USERS, "vector": users.tolist()}),
        pl.DataFrame({"item_id": ITEMS, "vector": items.tolist()}),
    )


def _read_all(repo: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    candidates = [*ITEMS, "unknown-item"]
    raw = OnlineKnowledge(repo)
    ours = KnowledgeServer(repo)
    users = np.stack([raw.get(u, []).user for u in USERS])
    batch = ours.get(USERS[3], candidates)
    np.testing.assert_array_equal(batch.items, raw.get(USERS[3], candidates).items)
    return users, batch.items, batch.items_missing


def _teardown_online(repo: Path) -> None:
    from kar.features import feature_store

    try:
        store = feature_store(repo)
        views = store.list_feature_views()
        store.provider.teardown_infra(store.project, views, store.list_entities())
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the test's own failure
        print(f"teardown of {repo} failed: {exc}")


@pytest.mark.slow
def test_redis_and_postgres_read_back_what_sqlite_reads(
    tmp_path: Path, redis_up: None, pg_registry_url: str
) -> None:
    users, items = _vectors()
    tag = uuid.uuid4().hex[:8]
    os.environ["KAR_TEST_PG_PASSWORD"] = ""  # a secret from the environment, expanded by Feast
    pg_online = {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "database": PG_DB,
        "user": "postgres",
        "password": "${KAR_TEST_PG_PASSWORD}",
        "sslmode": "disable",
    }
    registry = {"registry_type": "sql", "path": pg_registry_url, "cache_ttl_seconds": 60}
    repos = {
        "sqlite": init_feature_repo(tmp_path / "sqlite", project=f"kar_s_{tag}"),
        "redis": init_feature_repo(
            tmp_path / "redis", project=f"kar_r_{tag}", online_store=REDIS, registry=registry
        ),
        "postgres": init_feature_repo(
            tmp_path / "pg", project=f"kar_p_{tag}", online_store=pg_online, registry=registry
        ),
    }
    assert describe_stores(repos["redis"])["online_store"] == "redis (127.0.0.1:6379)"
    assert describe_stores(repos["redis"])["registry"].startswith("sql (postgresql+psycopg://")
    try:
        reads = {}
        for name, repo in repos.items():
            publish(repo, users, items, T0)
            reads[name] = _read_all(repo)
        for name in ("redis", "postgres"):
            for ours, sqlite in zip(reads[name], reads["sqlite"], strict=True):
                np.testing.assert_array_equal(ours, sqlite)
        assert reads["redis"][2].tolist() == [False] * len(ITEMS) + [True]
        # the refresh path (push) goes through the same code for every store
        pushed = pl.DataFrame({"user_id": ["new-user"], "vector": [[0.25] * DIM]})
        for repo in repos.values():
            assert push_online(repo, pushed, None) == 1
            assert KnowledgeServer(repo).get("new-user", []).user.tolist() == [0.25] * DIM
    finally:
        for name in ("redis", "postgres"):
            _teardown_online(repos[name])


def test_redis_down_is_a_clear_error_and_nothing_is_written(tmp_path: Path) -> None:
    down = {"type": "redis", "connection_string": "127.0.0.1:1"}  # nothing listens on port 1
    repo = init_feature_repo(tmp_path / "fr", project="kar_down", online_store=down)
    users, items = _vectors()
    with pytest.raises(FeatureStoreError, match=r"redis at 127.0.0.1:1 is unreachable.*again"):
        check_online_store(repo, timeout_s=0.5)
    with pytest.raises(FeatureStoreError, match=r"redis at 127.0.0.1:1 is unreachable"):
        publish(repo, users, items)
    with pytest.raises(FeatureStoreError, match=r"redis at 127.0.0.1:1 is unreachable"):
        push_online(repo, users, None)
    assert not list((repo / "data").rglob("*.parquet"))


@pytest.mark.slow
def test_publish_retry_after_redis_comes_back_has_no_duplicates(
    tmp_path: Path, redis_up: None
) -> None:
    tag = uuid.uuid4().hex[:8]
    repo = init_feature_repo(tmp_path / "fr", project=f"kar_retry_{tag}", online_store=REDIS)
    users, items = _vectors()
    try:
        # Redis "down": point the repo at a dead port, publish fails before any write.
        config = repo / "feature_store.yaml"
        live = config.read_text()
        config.write_text(live.replace("127.0.0.1:6379", "127.0.0.1:1"))
        with pytest.raises(FeatureStoreError, match="unreachable"):
            publish(repo, users, items)
        # A crash between the offline write and materialize leaves the parts: simulate
        # with materialize=False, then bring Redis "back" and retry the same publish.
        config.write_text(live)
        publish(repo, users, items, materialize=False)
        report = publish(repo, users, items)
        assert report.materialized
        for view in ("user_knowledge", "item_knowledge"):
            assert len(list((repo / "data" / view).glob("*.parquet"))) == 1
        batch = KnowledgeServer(repo).get(USERS[0], ITEMS[:3])
        np.testing.assert_allclose(batch.user, users["vector"][0].to_list())
        assert not batch.items_missing.any()
    finally:
        _teardown_online(repo)
