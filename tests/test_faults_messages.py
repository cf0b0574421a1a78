"""Messages and settings the fault probe (issue 30) found untrue or ignored: a resumed
publish's partition count, rejects files of re-imports, ``kar generate --limit 0``, and
kar.yaml's Feast store settings reaching feature_store.yaml. Real files, real Feast."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from kar.cli import app
from kar.data import load_demo, write_demo_dataset
from kar.errors import FeatureStoreError
from kar.features import init_feature_repo, publish
from kar.features.repo import (
    require_project_stores,
    store_differences,
    sync_project_stores,
)
from kar.generation import KnowledgeStore
from kar.generation.imports import import_texts
from kar.pipeline import init_project
from kar.project import ProjectFolder
from kar.prompts import Scenario

runner = CliRunner()


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pl.DataFrame(rows, schema=["entity_id", "kind", "text"], orient="row").write_csv(path)
    return path


def test_reimport_appends_rejects_and_keeps_the_rows_own_values(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "data", n_users=4, n_items=None)  # ids f001..f581
    ds, scenario = load_demo(tmp_path / "data"), Scenario.load("demo")
    store, rejects = KnowledgeStore(tmp_path / "k.db"), tmp_path / "rejects"
    first = [("f001", "item", "Good."), ("f003", "Genre", "Unknown kind."), ("zz", "item", "x")]
    report = import_texts(_csv(tmp_path / "t.csv", first), store, ds, scenario, rejects_dir=rejects)
    assert report.n_rejected == 2 and report.rejects_kept == 0
    assert "appended" not in report.summary()
    rows = pl.read_csv(report.rejects_file, infer_schema=False).sort("row")
    # the unknown kind's row keeps its id and kind as the file had them
    own = rows.select("row", "entity_id", "kind").rows()
    assert own == [("2", "f003", "Genre"), ("3", "zz", "item")]
    assert rows["reason"][0] == "unknown kind (expected user or item)"
    assert rows["item_id"][1] == "zz"  # the loaders' columns are still filled where known

    second = [("f001", "item", "Good."), ("", "user", "No id.")]
    again = import_texts(_csv(tmp_path / "t.csv", second), store, ds, scenario, rejects_dir=rejects)
    assert again.rejects_file == report.rejects_file and again.rejects_kept == 2
    assert "(appended; 2 earlier rejected rows kept)" in again.summary()
    both = pl.read_csv(again.rejects_file, infer_schema=False)
    assert both.height == 3  # the first import's two rejects are still there
    assert both["reason"].to_list()[:2] == rows["reason"].to_list()
    assert both["reason"][2] == "missing entity_id" and both["kind"][2] == "user"
    assert both["imported_at"].null_count() == 0

    clean = import_texts(
        _csv(tmp_path / "t.csv", [("f001", "item", "Good.")]), store, ds, scenario,
        rejects_dir=rejects,
    )  # fmt: skip
    assert clean.n_rejected == 0 and clean.rejects_kept == 3
    assert pl.read_csv(clean.rejects_file).height == 3  # nothing new, nothing lost


def test_generate_limit_zero_says_so_and_negative_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "p"
    init_project(root, n_users=4)
    zero = runner.invoke(app, ["generate", "-p", str(root), "--limit", "0"])
    assert zero.exit_code == 0, zero.output
    assert "nothing to do: --limit 0" in zero.output
    assert KnowledgeStore(ProjectFolder.load(root).knowledge_store_url).count() == 0
    negative = runner.invoke(app, ["generate", "-p", str(root), "--limit", "-1"])
    assert negative.exit_code == 2  # typer's usage error: q[:-1] would ask all but one


def _publish_one(repo: Path) -> str:
    users = pl.DataFrame({"user_id": ["u1", "u2"], "vector": np.eye(2, 32).tolist()})
    items = pl.DataFrame({"item_id": ["i1"], "vector": np.ones((1, 32)).tolist()})
    when = datetime(2024, 1, 1, tzinfo=UTC)
    return publish(repo, users, items, when, materialize=False).summary()


def test_republish_reports_reused_partitions_not_new_ones(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "fr", project="kar_msg")
    assert "2 new Parquet partition(s), offline only" in _publish_one(repo)
    again = _publish_one(repo)  # the same publish again (as after a killed run)
    assert "0 new Parquet partition(s) and 2 already written by an earlier run" in again
    assert len(list((repo / "data").rglob("part-*.parquet"))) == 2


def test_kar_yaml_store_edits_reach_feature_store_yaml_at_publish(tmp_path: Path) -> None:
    from kar.features import feature_store

    project = init_project(tmp_path / "p", n_users=4)
    repo, fs = project.feature_repo, project.settings.features
    assert sync_project_stores(repo, fs) == []  # init wrote them: nothing to change
    before = (repo / "feature_store.yaml").read_text()
    fs.project, fs.online_store = "kar_v2", {"type": "sqlite", "path": "data/online_v2.db"}
    with pytest.raises(FeatureStoreError, match="run `kar publish` first") as err:
        require_project_stores(repo, fs)  # what refresh checks
    assert "features.project, features.online_store" in str(err.value)
    assert sync_project_stores(repo, fs) == ["project", "online_store"]
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["project"] == "kar_v2"
    assert config["online_store"] == {"type": "sqlite", "path": "data/online_v2.db"}
    assert config["offline_store"] == yaml.safe_load(before)["offline_store"]  # kept
    assert store_differences(repo, {"project": "kar_v2"}) == []
    require_project_stores(repo, fs)  # in step now
    opened = feature_store(repo).config  # what Feast reads
    assert opened.project == "kar_v2" and opened.online_store.path.endswith("online_v2.db")
    fs.project = "not an identifier"
    with pytest.raises(FeatureStoreError, match="Python identifier"):
        sync_project_stores(repo, fs)
