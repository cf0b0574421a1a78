"""Feast vector search round trip on the real local PostgreSQL with pgvector.

Needs PostgreSQL at 127.0.0.1:5432 (database ``test``, trust auth) with the pgvector
extension available (``.ci/run`` installs it); skips with a message otherwise.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.embedding.feast_repo import (
    DEFAULT_ONLINE_STORE,
    ITEM_VIEW,
    USER_VIEW,
    init_embedding_repo,
    nearest_items,
    publish_embeddings,
    recommend_items,
    similar_items,
)
from kar.errors import DataValidationError, FeatureStoreError
from kar.features.repo import feature_store

DIM = 16


@pytest.fixture(scope="module")
def pgvector_store() -> dict:
    try:
        import psycopg

        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/test", connect_timeout=2, autocommit=True
        ) as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432/test ({exc}); run .ci/run")
    if row is None:
        pytest.skip("pgvector is not installed on the PostgreSQL server; .ci/run installs it")
    return dict(DEFAULT_ONLINE_STORE)


def _teardown(repo: Path) -> None:
    try:
        store = feature_store(repo)
        store.provider.teardown_infra(store.project, store.list_feature_views(), [])
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the test's own failure
        print(f"teardown of {repo} failed: {exc}")


def test_vector_search_returns_the_planted_nearest_item_first(
    tmp_path: Path, pgvector_store: dict
) -> None:
    rng = np.random.default_rng(3)
    items = rng.standard_normal((60, DIM)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    ids = [f"m{i}" for i in range(60)]
    # plant: m7 is a slightly perturbed copy of m0, m12 a further one; the rest are random
    items[7] = items[0] + 0.05 * rng.standard_normal(DIM)
    items[12] = items[0] + 0.4 * rng.standard_normal(DIM)
    user = (items[33] + 0.01 * rng.standard_normal(DIM)).astype(np.float32)
    repo = init_embedding_repo(
        tmp_path / "emb", f"kar_emb_{uuid.uuid4().hex[:8]}", DIM, online_store=pgvector_store
    )
    frame = pl.DataFrame({"entity_id": ids, "vector": items.tolist()})
    users = pl.DataFrame({"entity_id": ["u1"], "vector": [user.tolist()]})
    try:
        report = publish_embeddings(
            repo, items=frame, users=users, texts={i: f"title {i}" for i in ids}
        )
        assert (report.items, report.users) == (60, 1)
        hits = similar_items(repo, "m0", k=5)
        assert [h.entity_id for h in hits[:2]] == ["m7", "m12"]
        assert "m0" not in [h.entity_id for h in hits]
        assert hits[0].text == "title m7"
        expected = 1 - float(items[0] @ items[7] / np.linalg.norm(items[7]))
        assert hits[0].distance == pytest.approx(expected, abs=1e-4)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        # the query vector itself: its own item comes back first at distance ~0
        assert nearest_items(repo, items[21], k=1)[0].entity_id == "m21"
        assert recommend_items(repo, "u1", k=3)[0].entity_id == "m33"
        with pytest.raises(FeatureStoreError, match="no embedding"):
            similar_items(repo, "never-published", k=3)
        store = feature_store(repo)
        fields = {f.name: f for f in store.get_feature_view(ITEM_VIEW).features}
        assert fields[ITEM_VIEW].vector_index and fields[ITEM_VIEW].vector_length == DIM
        assert store.get_feature_view(USER_VIEW).features[0].vector_index
    finally:
        _teardown(repo)


def test_publish_rejects_a_vector_of_the_wrong_size(tmp_path: Path, pgvector_store: dict) -> None:
    repo = init_embedding_repo(
        tmp_path / "emb", f"kar_emb_{uuid.uuid4().hex[:8]}", DIM, online_store=pgvector_store
    )
    bad = pl.DataFrame({"entity_id": ["a", "b"], "vector": [[0.0] * DIM, [0.0] * (DIM - 1)]})
    try:
        with pytest.raises(DataValidationError, match=r"row 2.*'vector'.*15 values"):
            publish_embeddings(repo, items=bad)
    finally:
        _teardown(repo)


def test_sqlite_vector_search_is_refused_with_the_reason_off_python_310(tmp_path: Path) -> None:
    import sys

    if sys.version_info[:2] == (3, 10):
        pytest.skip("Feast loads sqlite-vec on Python 3.10")
    with pytest.raises(FeatureStoreError, match="Python 3.10"):
        init_embedding_repo(
            tmp_path / "emb",
            "kar_emb_sqlite",
            DIM,
            online_store={"type": "sqlite", "path": "data/online.db", "vector_enabled": True},
        )
