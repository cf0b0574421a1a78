"""Declared knowledge features: YAML/Python declarations, coexisting versions, retirement,
the serving API (cache, pinning, unknown ids) and publish guards, on a real SQLite repo."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.errors import FeatureStoreError
from kar.features import init_feature_repo, publish, training_set
from kar.features.declare import (
    KnowledgeFeature,
    add_features,
    describe_feature,
    list_features,
    load_declarations,
    publish_feature,
    retire_feature,
)
from kar.features.serving import KnowledgeServer

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ITEMS = [f"i{i}" for i in range(30)]
V1_YAML = """
features:
  - name: item_facts
    version: 1
    entity: item
    scenario: movies
    prompt_version: p1
    llm: smollm2-135m
    encoder: all-MiniLM-L6-v2
    adaptor: run-a
    dim: 8
"""


def _items(dim: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    vectors = np.random.default_rng(seed).standard_normal((len(ITEMS), dim)).astype(np.float32)
    return pl.DataFrame({"item_id": ITEMS, "vector": vectors.tolist()}), vectors


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("versions")
    repo = init_feature_repo(root / "fr", project="kar_versions", vector_dim=4)
    users = pl.DataFrame({"user_id": ["u1"], "vector": [[1.0, 2.0, 3.0, 4.0]]})
    publish(repo, users, None, T0)
    spec = root / "item_facts.yaml"
    spec.write_text(V1_YAML)
    (v1,) = add_features(repo, load_declarations(spec))
    frame1, vec1 = _items(8, 1)
    publish_feature(repo, "item_facts", frame1, event_timestamp=T0)
    # Version 2, declared in Python: another adaptor run, another dimension.
    v2 = v1.model_copy(update={"version": 2, "adaptor": "run-b", "dim": 16})
    add_features(repo, [v2])
    frame2, vec2 = _items(16, 2)
    publish_feature(repo, "item_facts", frame2, version=2, event_timestamp=T0)
    return {"repo": repo, "spec": spec, "vec1": vec1, "vec2": vec2}


def test_versions_coexist_and_a_v1_model_keeps_reading_v1(versioned: dict) -> None:
    repo = versioned["repo"]
    assert [(f.name, f.version) for f in list_features(repo)] == [
        ("item_facts", 1),
        ("item_facts", 2),
    ]
    v1_model = KnowledgeServer(repo, item_feature="item_facts@1")  # pinned at training time
    newest = KnowledgeServer(repo, item_feature="item_facts")
    batch1 = v1_model.get("u1", ["i3", "i0"])
    batch2 = newest.get("u1", ["i3", "i0"])
    np.testing.assert_allclose(batch1.items, versioned["vec1"][[3, 0]])
    np.testing.assert_allclose(batch2.items, versioned["vec2"][[3, 0]])
    np.testing.assert_allclose(batch1.user, [1.0, 2.0, 3.0, 4.0])
    # offline, for training: the v1 feature service still gives v1 vectors
    entity_df = pl.DataFrame(
        {"user_id": ["u1"], "item_id": ["i5"], "event_timestamp": [datetime(2024, 2, 1)]}
    )
    out = training_set(repo, entity_df, features="item_facts_v1_service")
    np.testing.assert_allclose(out["item_facts"][0].to_list(), versioned["vec1"][5])


def test_changed_declaration_of_an_existing_version_is_refused(versioned: dict) -> None:
    repo = versioned["repo"]
    assert add_features(repo, load_declarations(versioned["spec"])) == []  # same: no-op
    changed = get_v1(repo).model_copy(update={"adaptor": "run-c"})
    with pytest.raises(FeatureStoreError, match="declare version 3"):
        add_features(repo, [changed])


def get_v1(repo: Path) -> KnowledgeFeature:
    return next(f for f in list_features(repo) if f.version == 1)


def test_describe_shows_feast_objects_and_lineage(versioned: dict) -> None:
    info = describe_feature(versioned["repo"], "item_facts", 2)
    feast = info["feast"]
    assert feast["feature_view"] == "item_facts_v2"
    assert feast["push_source"] == "item_facts_v2_push"
    assert feast["feature_service"] == "item_facts_v2_service"
    assert feast["entities"] == ["item"]
    assert feast["tags"]["kar.adaptor"] == "run-b"
    assert feast["tags"]["kar.prompt_version"] == "p1"
    assert feast["tags"]["kar.llm"] == "smollm2-135m"
    assert feast["tags"]["kar.vector_dim"] == "16"


def test_bad_declarations_name_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x1\nentity: shop\nscenario: s\n")
    with pytest.raises(FeatureStoreError, match=r"bad.yaml: feature 1: field 'entity'"):
        load_declarations(bad)
    bad.write_text("name: user_knowledge\nentity: user\nscenario: s\n")
    with pytest.raises(FeatureStoreError, match="bad.yaml.*user_knowledge"):
        load_declarations(bad)


def test_publish_feature_guards_reject_before_the_store(versioned: dict) -> None:
    repo = versioned["repo"]
    folder = repo / "data" / "item_facts_v1"
    before = sorted(folder.glob("*.parquet"))
    for vector, message in (
        ([0.0] * 7, "dimension 7, expected dimension 8"),
        ([float("nan")] * 8, "NaN"),
        ([0.0] * 7 + [float("inf")], "infinity"),
    ):
        frame = pl.DataFrame({"item_id": ["i1"], "vector": [vector]})
        with pytest.raises(FeatureStoreError, match=message):
            publish_feature(repo, "item_facts", frame, version=1)
    assert sorted(folder.glob("*.parquet")) == before


def test_unknown_ids_are_zeros_with_flags_never_errors(versioned: dict) -> None:
    server = KnowledgeServer(versioned["repo"], item_feature="item_facts@2")
    batch = server.get("ghost", ["nope", "i1", "nope", "also-unknown"])
    assert batch.user_missing and batch.user.shape == (4,) and not batch.user.any()
    assert batch.items.shape == (4, 16)
    assert batch.items_missing.tolist() == [True, False, True, True]
    assert not batch.items[batch.items_missing].any()
    np.testing.assert_allclose(batch.items[1], versioned["vec2"][1])
    assert server.get("u1", []).items.shape == (0, 16)


def test_item_cache_is_invalidated_by_a_new_feature_version(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "fr", project="kar_cache", vector_dim=4)
    first = pl.DataFrame({"item_id": ["a", "b"], "vector": [[1.0] * 4, [2.0] * 4]})
    publish(repo, None, first, T0)
    cached = KnowledgeServer(repo, version_check_s=3600)  # never re-checks by itself
    checking = KnowledgeServer(repo, version_check_s=0)  # checks on every request
    assert cached.get("u", ["a"]).items[0].tolist() == [1.0] * 4
    assert checking.get("u", ["a"]).items[0].tolist() == [1.0] * 4
    publish(repo, None, pl.DataFrame({"item_id": ["a"], "vector": [[9.0] * 4]}))
    assert cached.get("u", ["a"]).items[0].tolist() == [1.0] * 4  # served from the cache
    assert checking.get("u", ["a"]).items[0].tolist() == [9.0] * 4  # registry version moved
    cached.invalidate()
    assert cached.get("u", ["a", "b"]).items.tolist() == [[9.0] * 4, [2.0] * 4]


def test_retired_version_leaves_feast_and_cannot_be_served(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "fr", project="kar_retire", vector_dim=4)
    spec = KnowledgeFeature(name="user_taste", entity="user", scenario="s", dim=4)
    add_features(repo, [spec, spec.model_copy(update={"version": 2})])
    retire_feature(repo, "user_taste", 1)
    from kar.features import list_knowledge_views

    names = {v["name"] for v in list_knowledge_views(repo)}
    assert "user_taste_v1" not in names and "user_taste_v2" in names
    assert [f.retired for f in list_features(repo)] == [True, False]
    with pytest.raises(FeatureStoreError, match="retired"):
        KnowledgeServer(repo, user_feature="user_taste@1")
    with pytest.raises(FeatureStoreError, match="retired"):
        add_features(repo, [spec])


def test_republishing_the_same_vectors_writes_no_duplicate_part(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "fr", project="kar_retry", vector_dim=4)
    a = pl.DataFrame({"item_id": ["x"], "vector": [[1.0] * 4]})
    b = pl.DataFrame({"item_id": ["x"], "vector": [[2.0] * 4]})
    publish(repo, None, a, materialize=False)  # the state a crash after the write leaves
    publish(repo, None, a)  # the retry: same rows, no second part, now materialized
    assert len(list((repo / "data" / "item_knowledge").glob("*.parquet"))) == 1
    publish(repo, None, b)
    publish(repo, None, a)  # a real change back to A is a new part, and A is served
    assert len(list((repo / "data" / "item_knowledge").glob("*.parquet"))) == 3
    assert KnowledgeServer(repo).get("u", ["x"]).items[0].tolist() == [1.0] * 4
