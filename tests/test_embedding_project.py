"""Embeddings as a stage of the project: ``kar.Project.embed()`` on kar.yaml's ``embedding:``
section, the deprecated ``embedding.yaml``, the vector cache, and one Feast repository layer
(real encoder, real PostgreSQL + pgvector; skips with the reason when pgvector is missing)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

import kar
from kar.embedding.config import LegacySettingsWarning
from kar.embedding.feast_repo import KIND, init_embedding_repo
from kar.errors import ConfigError, FeatureStoreError
from kar.features.repo import SETTINGS_FILE, feature_store, init_feature_repo, read_settings


def _pgvector_or_skip() -> None:
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=2) as c:
            row = c.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432/test ({exc}); run .ci/run")
    if row is None:
        pytest.skip("pgvector is not installed on the PostgreSQL server; .ci/run installs it")


def _set_embedding(root: Path, section: dict) -> None:
    config = yaml.safe_load((root / "kar.yaml").read_text())
    config["embedding"] = section
    (root / "kar.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("emb") / "proj"
    kar.Project.init(root, n_users=20)
    return root


def test_project_embed_writes_item_vectors_that_feast_finds(demo: Path) -> None:
    _pgvector_or_skip()
    _set_embedding(demo, {"feast": {"project": f"kar_emb_proj_{uuid.uuid4().hex[:8]}"}})
    project = kar.Project(demo)
    try:
        report = project.embed(progress=False)
        items = report.items
        assert items is not None and report.published is not None
        assert items.dim == 384 and items.items.height == project.dataset.items.height
        assert report.published.items == items.items.height
        assert (demo / "artifacts" / "embedding" / "items" / "meta.json").is_file()
        assert read_settings(report.paths.repo)["kind"] == KIND  # the one settings reader
        # searchable: an item's nearest neighbours are the nearest by its saved vector
        ids = items.items["entity_id"].to_list()
        matrix, _ = items.matrix("item", ids)
        hits = project.similar_items(ids[0], k=3)
        expected = [ids[i] for i in np.argsort(-(matrix @ matrix[0]))[1:4]]
        assert [h.entity_id for h in hits] == expected
        assert ids[0] not in [h.entity_id for h in hits]
        assert hits[0].text and hits[0].text.startswith("title ")
    finally:
        try:
            store = feature_store(demo / "embedding_repo")
            store.provider.teardown_infra(store.project, store.list_feature_views(), [])
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"teardown failed: {exc}")


def test_item_vectors_go_through_the_project_vector_cache(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    project = kar.Project.init(root, n_users=5)
    first = project.embed(publish=False, progress=False).items
    from kar.encoding import VectorCache

    with VectorCache(project.folder.vector_cache_path) as cache:
        assert first is not None and cache.count(first.encoder_id) == first.items.height
    again = kar.Project(root).embed(publish=False, progress=False).items
    assert again is not None
    np.testing.assert_array_equal(
        again.matrix("item", first.items["entity_id"].to_list())[0],
        first.matrix("item", first.items["entity_id"].to_list())[0],
    )


def test_a_legacy_embedding_yaml_is_read_once_and_said_to_be_deprecated(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    kar.Project.init(root, n_users=5)
    (root / "embedding.yaml").write_text("tune: {epochs: 2}\nfacts: false\n")
    with pytest.warns(LegacySettingsWarning, match="embedding.yaml is deprecated"):
        project = kar.Project(root)
    assert project.settings.embedding.tune.epochs == 2
    assert project.settings.embedding.facts is False
    _set_embedding(root, {"tune": {"epochs": 3}})  # both set it: kar.yaml or the file?
    with pytest.raises(ConfigError, match="both set the embedding settings"):
        kar.Project(root)
    (root / "embedding.yaml").unlink()
    assert kar.Project(root).settings.embedding.tune.epochs == 3


def test_the_embedding_repo_shares_the_feature_repo_layer(tmp_path: Path) -> None:
    knowledge = init_feature_repo(tmp_path / "feature_repo", "kar_t", 8)
    with pytest.raises(FeatureStoreError, match="knowledge feature repository"):
        init_embedding_repo(knowledge, "kar_t_emb", 8)
    with pytest.raises(FeatureStoreError, match="not a kar feature repository.*kar embed"):
        read_settings(tmp_path / "nothing")
    settings = json.loads((knowledge / SETTINGS_FILE).read_text())
    assert "kind" not in settings  # the knowledge repo is untouched
