"""kar.features against a real Feast repository (DuckDB offline, SQLite online) in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from kar.errors import FeatureStoreError
from kar.features import (
    OnlineKnowledge,
    init_feature_repo,
    list_knowledge_views,
    publish,
    push_online,
    training_set,
)

DIM = 32
T1 = datetime(2024, 1, 1, tzinfo=UTC)
T2 = datetime(2024, 2, 1, tzinfo=UTC)
USERS = [f"u{i}" for i in range(20)]
ITEMS = [f"i{i}" for i in range(50)]
UPDATED = USERS[:10]  # users that get a second vector at T2
LINEAGE = {"prompt_version": "pv123", "llm": "smollm2-135m", "encoder": "minilm", "adaptor": "a1"}


def _frame(key: str, ids: list[str], vectors: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({key: ids, "vector": vectors.tolist()})


def _parts(repo: Path, view: str) -> list[Path]:
    return sorted((repo / "data" / view).glob("*.parquet"))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One repo: users + items published at T1, then half the users again at T2."""
    repo = init_feature_repo(tmp_path_factory.mktemp("kar") / "feature_repo", project="kar_test")
    rng = np.random.default_rng(0)
    u1 = rng.standard_normal((len(USERS), DIM)).astype(np.float32)
    i1 = rng.standard_normal((len(ITEMS), DIM)).astype(np.float32)
    u2 = rng.standard_normal((len(UPDATED), DIM)).astype(np.float32)
    first = publish(repo, _frame("user_id", USERS, u1), _frame("item_id", ITEMS, i1), T1)
    # Second publish: entity_id column and a per-row event_timestamp (e.g. the user's as_of).
    users2 = _frame("entity_id", UPDATED, u2).with_columns(
        event_timestamp=pl.lit(T2, dtype=pl.Datetime("us", "UTC"))
    )
    second = publish(repo, users2, None, lineage=LINEAGE)
    return {"repo": repo, "u1": u1, "i1": i1, "u2": u2, "first": first, "second": second}


def test_init_feature_repo_renders_template(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "fr", project="shop", vector_dim=8)
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["project"] == "shop"
    assert config["provider"] == "local"
    assert config["registry"] == "data/registry.db"
    assert config["online_store"] == {"type": "sqlite", "path": "data/online_store.db"}
    assert config["offline_store"] == {"type": "duckdb"}
    assert config["entity_key_serialization_version"] == 3
    assert json.loads((repo / "kar_repo.json").read_text())["vector_dim"] == 8
    assert "data/" in (repo / ".feastignore").read_text()
    assert (repo / "knowledge_features.py").is_file()
    assert not list(repo.glob("*.j2"))
    assert (repo / "data" / "user_knowledge").is_dir()
    with pytest.raises(FeatureStoreError, match="exists"):
        init_feature_repo(repo)
    with pytest.raises(FeatureStoreError, match="identifier"):
        init_feature_repo(tmp_path / "other", project="bad-name")


def test_import_kar_features_does_not_import_feast() -> None:
    code = "import sys, kar, kar.features; assert 'feast' not in sys.modules, 'feast imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_publish_appends_partitions_and_reports(published: dict) -> None:
    repo, first, second = published["repo"], published["first"], published["second"]
    assert (first.users, first.items, second.users, second.items) == (20, 50, 10, 0)
    assert first.materialized and second.materialized
    assert {"validate", "write", "apply", "materialize"} <= set(first.seconds)
    user_parts = _parts(repo, "user_knowledge")
    assert len(user_parts) == 2  # the first publish's file is still there
    assert len(_parts(repo, "item_knowledge")) == 1
    part = pl.read_parquet(user_parts[0])
    assert part.schema["user_knowledge_vector"] == pl.List(pl.Float32)
    assert part.schema["event_timestamp"] == pl.Datetime("us", "UTC")
    assert part.schema["created"] == pl.Datetime("us", "UTC")


def test_online_reads_latest_vectors_in_candidate_order(published: dict) -> None:
    online = OnlineKnowledge(published["repo"])
    candidates = ["i7", "i0", "nope", "i49", "i3"]
    batch = online.get("u3", candidates)  # updated at T2: sees the second vector
    np.testing.assert_allclose(batch.user, published["u2"][3], rtol=1e-6)
    assert batch.user.dtype == np.float32 and not batch.user_missing
    assert batch.items.shape == (5, DIM)
    for row, item in enumerate(candidates):
        if item == "nope":
            assert batch.items_missing[row] and not batch.items[row].any()
        else:
            assert not batch.items_missing[row]
            np.testing.assert_allclose(batch.items[row], published["i1"][ITEMS.index(item)])
    kept = online.get("u15", ["i1"])  # not republished: keeps the T1 vector
    np.testing.assert_allclose(kept.user, published["u1"][15], rtol=1e-6)
    unknown = online.get("ghost", [])
    assert unknown.user_missing and not unknown.user.any() and unknown.items.shape == (0, DIM)


def test_training_set_is_point_in_time_and_keeps_every_row(published: dict) -> None:
    u1, u2, i1 = published["u1"], published["u2"], published["i1"]
    between, after, before = T1 + timedelta(days=3), T2 + timedelta(hours=1), T1 - timedelta(1)
    entity_df = pl.DataFrame(
        {
            "user_id": ["u2", "u2", "u2", "u15", "ghost", "u2"],
            "item_id": ["i5", "i5", "i5", "i9", "i9", "nope"],
            "event_timestamp": [between, after, before, after, between, between],
            "label": [1, 0, 1, 1, 0, 1],
        }
    ).vstack(  # an exact duplicate row must stay a separate row
        pl.DataFrame(
            {"user_id": ["u2"], "item_id": ["i5"], "event_timestamp": [between], "label": [1]}
        )
    )
    out = training_set(published["repo"], entity_df)
    assert out.height == entity_df.height
    assert out.select("user_id", "item_id", "label").equals(
        entity_df.select("user_id", "item_id", "label")
    )
    assert out.schema["user_knowledge_vector"] == pl.List(pl.Float32)
    users = out["user_knowledge_vector"].to_list()
    items = out["item_knowledge_vector"].to_list()
    np.testing.assert_allclose(users[0], u1[2], rtol=1e-6)  # between T1 and T2: v1
    np.testing.assert_allclose(users[1], u2[2], rtol=1e-6)  # after T2: v2
    assert users[2] is None and items[2] is None  # before anything was published
    np.testing.assert_allclose(users[3], u1[15], rtol=1e-6)  # never updated: v1
    assert users[4] is None  # unknown user
    np.testing.assert_allclose(items[4], i1[9], rtol=1e-6)
    assert items[5] is None  # unknown item
    np.testing.assert_allclose(users[6], u1[2], rtol=1e-6)


def test_views_are_listed_with_vector_dtype_and_lineage(published: dict) -> None:
    views = {v["name"]: v for v in list_knowledge_views(published["repo"])}
    assert set(views) == {"user_knowledge", "item_knowledge", "knowledge_affinity"}
    assert views.pop("knowledge_affinity")["on_demand"]  # the user x item score
    assert views["user_knowledge"]["entities"] == ["user"]
    assert views["item_knowledge"]["features"] == ["item_knowledge_vector"]
    for view in views.values():
        assert view["dtype"] == "Array(Float32)"
        assert view["tags"]["kar.prompt_version"] == "pv123"  # set by the second publish
        assert view["tags"]["kar.vector_dim"] == str(DIM)


def test_push_online_updates_online_store_only(published: dict) -> None:
    repo = published["repo"]
    vector = np.full((1, DIM), 0.5, dtype=np.float32)
    before = _parts(repo, "user_knowledge")
    assert push_online(repo, _frame("user_id", ["pushed"], vector), None) == 1
    batch = OnlineKnowledge(repo).get("pushed", [])
    assert not batch.user_missing
    np.testing.assert_allclose(batch.user, vector[0])
    assert _parts(repo, "user_knowledge") == before


@pytest.mark.parametrize(
    ("users", "message"),
    [
        (pl.DataFrame({"user_id": ["a", "b"], "vector": [[0.0] * DIM, [0.0] * 5]}), r"'b'.*5"),
        (
            pl.DataFrame({"user_id": ["a", "b"], "vector": [[0.0] * DIM, [float("nan")] * DIM]}),
            r"'b'.*'vector'.*NaN",
        ),
        (
            pl.DataFrame({"user_id": ["a"], "vector": [[0.0] * (DIM - 1) + [float("inf")]]}),
            r"'a'.*NaN, infinity",
        ),
        (pl.DataFrame({"user_id": ["a", "b"], "vector": [[0.0] * DIM, None]}), r"'b'.*null"),
        (pl.DataFrame({"user_id": ["a", "a"], "vector": [[0.0] * DIM] * 2}), r"'a'.*repeats"),
        (pl.DataFrame({"id": ["a"], "vector": [[0.0] * DIM]}), r"'user_id' or 'entity_id'"),
    ],
)
def test_bad_vectors_rejected_before_writing(
    tmp_path: Path, users: pl.DataFrame, message: str
) -> None:
    repo = init_feature_repo(tmp_path / "fr")
    items = pl.DataFrame({"item_id": ["i"], "vector": [[1.0] * DIM]})
    with pytest.raises(FeatureStoreError, match=message):
        publish(repo, items=items, users=users)
    assert not _parts(repo, "user_knowledge") and not _parts(repo, "item_knowledge")
    assert not (repo / "data" / "registry.db").exists()


def test_publish_outside_a_repo_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreError, match="not a kar feature repository"):
        publish(tmp_path, None, None)


def test_bad_item_blocks_valid_users_too(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "fr")
    users = pl.DataFrame({"user_id": ["u"], "vector": [[1.0] * DIM]})
    items = pl.DataFrame({"item_id": [7], "vector": [[1.0] * (DIM + 1)]})
    with pytest.raises(FeatureStoreError, match=r"item '7'.*'vector'.*33"):
        publish(repo, users, items)
    assert not _parts(repo, "user_knowledge")
