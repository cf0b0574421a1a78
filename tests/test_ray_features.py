"""``features.batch_engine: ray``: Feast's Ray compute engine on a real local Ray cluster
(2 CPUs) materialises the same vectors as Feast's local engine. Skipped without Ray."""

from __future__ import annotations

import importlib.util
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from kar.errors import FeatureStoreError
from kar.features import OnlineKnowledge, init_feature_repo, publish, training_set
from kar.features.engines import (
    batch_engine_config,
    read_batch_engine,
    set_batch_engine,
    sync_batch_engine,
)
from kar.project import FeatureSettings

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'kar[ray]')"
)
DIM = 16
T1 = datetime(2024, 1, 1, tzinfo=UTC)
USERS = [f"u{i}" for i in range(12)]
ITEMS = [f"i{i}" for i in range(30)]


def _frames() -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    users = rng.standard_normal((len(USERS), DIM)).astype(np.float32)
    items = rng.standard_normal((len(ITEMS), DIM)).astype(np.float32)
    return (
        pl.DataFrame({"user_id": USERS, "vector": users.tolist()}),
        pl.DataFrame({"item_id": ITEMS, "vector": items.tolist()}),
        users,
        items,
    )


def test_local_engine_writes_no_section_and_bad_settings_name_the_field(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "fr", project="kar_t")
    before = (repo / "feature_store.yaml").read_text()
    assert not sync_batch_engine(repo, FeatureSettings())  # local: nothing to write
    assert (repo / "feature_store.yaml").read_text() == before
    with pytest.raises(FeatureStoreError, match="features.batch_engine: 'spark'"):
        batch_engine_config("spark")
    with pytest.raises(FeatureStoreError, match="features.batch_engine_options"):
        batch_engine_config("local", {"max_workers": 2})
    with pytest.raises(Exception, match="batch_engine"):
        FeatureSettings.model_validate({"batch_engine": "dask"})
    # a hand-written block (several lines) is replaced whole; the other keys stay as they are
    path = repo / "feature_store.yaml"
    path.write_text(before + "batch_engine:\n  type: ray.engine\n  max_workers: 4\n")
    assert read_batch_engine(repo) == {"type": "ray.engine", "max_workers": 4}
    assert set_batch_engine(repo, None) and path.read_text() == before


@needs_ray
def test_ray_section_is_written_read_back_and_removed(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "fr", project="kar_t")
    settings = FeatureSettings.model_validate(
        {"batch_engine": "ray", "batch_engine_options": {"max_workers": 2}}
    )
    assert sync_batch_engine(repo, settings)
    assert not sync_batch_engine(repo, settings)  # unchanged: the file is not rewritten
    raw = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert raw["batch_engine"] == {"type": "ray.engine", "write_concurrency": 1, "max_workers": 2}
    assert raw["offline_store"] == {"type": "duckdb"} and raw["project"] == "kar_t"
    with pytest.raises(FeatureStoreError, match=r"batch_engine_options\.max_wrkers"):
        batch_engine_config("ray", {"max_wrkers": 2})
    assert set_batch_engine(repo, None) and read_batch_engine(repo) is None
    assert "batch_engine" not in yaml.safe_load((repo / "feature_store.yaml").read_text())


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
@needs_ray
def test_ray_engine_materialises_the_local_engines_vectors(cluster, tmp_path: Path, caplog) -> None:
    users, items, u, i = _frames()
    repos = {}
    for engine in ("local", "ray"):
        repo = init_feature_repo(tmp_path / engine, project="kar_t", vector_dim=DIM)
        sync_batch_engine(repo, FeatureSettings(batch_engine=engine))  # type: ignore[arg-type]
        repos[engine] = repo
    with caplog.at_level(logging.INFO, logger="feast.infra.compute_engines.ray.compute"):
        report = publish(repos["ray"], users, items, T1)
    assert report.materialized
    done = [r.getMessage() for r in caplog.records if "Materialization completed" in r.message]
    assert sorted(done) == [
        "Materialization completed for item_knowledge",
        "Materialization completed for user_knowledge",
    ]  # Feast's Ray engine ran both views
    publish(repos["local"], users, items, T1)

    candidates = ["i3", "i0", "nope", "i29"]
    reads = {e: OnlineKnowledge(r).get("u5", candidates) for e, r in repos.items()}
    np.testing.assert_array_equal(reads["ray"].user, reads["local"].user)
    np.testing.assert_array_equal(reads["ray"].items, reads["local"].items)
    np.testing.assert_array_equal(reads["ray"].items_missing, [False, False, True, False])
    np.testing.assert_allclose(reads["ray"].user, u[5], rtol=1e-6)
    np.testing.assert_allclose(reads["ray"].items[3], i[29], rtol=1e-6)
    for user in USERS:  # every user's online vector, both engines
        got = {e: OnlineKnowledge(r).get(user, []).user for e, r in repos.items()}
        np.testing.assert_array_equal(got["ray"], got["local"])

    entity_df = pl.DataFrame(
        {"user_id": ["u1", "u2", "ghost"], "item_id": ["i4", "i9", "i9"],
         "event_timestamp": [datetime(2024, 2, 1, tzinfo=UTC)] * 3}
    )  # fmt: skip
    sets = {e: training_set(r, entity_df) for e, r in repos.items()}
    assert sets["ray"].equals(sets["local"])  # training sets: the offline store, either way
