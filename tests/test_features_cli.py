"""`kar features add / versions / describe / list / retire` on a real project, and the
store settings of kar.yaml reaching feature_store.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from kar.cli import app
from kar.pipeline import init_project
from kar.project import ProjectFolder, ProjectSettings

runner = CliRunner()
SPEC = """
- name: item_mood
  entity: item
  scenario: demo
  prompt_version: abc123
  llm: smollm2-135m
  encoder: all-MiniLM-L6-v2
  adaptor: run-7
  dim: 16
- {name: item_mood, version: 2, entity: item, scenario: demo, adaptor: run-8, dim: 16}
"""


def test_features_commands_register_show_and_retire_versions(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert runner.invoke(app, ["init", str(root), "--users", "5"]).exit_code == 0
    spec = tmp_path / "mood.yaml"
    spec.write_text(SPEC)
    added = runner.invoke(app, ["features", "add", str(spec), "-p", str(root)])
    assert added.exit_code == 0, added.output
    assert "item_mood_v1" in added.output and "item_mood_v2_push" in added.output
    again = runner.invoke(app, ["features", "add", str(spec), "-p", str(root)])
    assert again.exit_code == 0 and "nothing new" in again.output
    listed = runner.invoke(app, ["features", "list", "-p", str(root)])
    assert "item_mood_v1" in listed.output and "item_mood_v2" in listed.output
    described = runner.invoke(app, ["features", "describe", "item_mood", "-p", str(root)])
    assert described.exit_code == 0, described.output
    for text in ('"item_mood_v1_service"', '"run-7"', '"abc123"', '"item_mood_v2"'):
        assert text in described.output
    retired = runner.invoke(app, ["features", "retire", "item_mood", "1", "-p", str(root)])
    assert retired.exit_code == 0, retired.output
    versions = runner.invoke(app, ["features", "versions", "-p", str(root)])
    assert "retired" in versions.output and "active" in versions.output
    spec.write_text(SPEC.split("- {")[0])  # re-adding a retired version is refused
    refused = runner.invoke(app, ["features", "add", str(spec), "-p", str(root)])
    assert refused.exit_code == 1 and "item_mood_v1 was retired" in refused.output
    spec.write_text("- {" + SPEC.split("- {")[1].replace("run-8", "run-9"))
    changed = runner.invoke(app, ["features", "add", str(spec), "-p", str(root)])
    assert changed.exit_code == 1 and "declare version 3" in changed.output
    missing = runner.invoke(app, ["features", "describe", "nope", "-p", str(root)])
    assert missing.exit_code == 1 and "no knowledge feature 'nope'" in missing.output


def test_kar_yaml_store_settings_reach_feature_store_yaml(tmp_path: Path) -> None:
    settings = ProjectSettings()
    settings.features.online_store = {"type": "redis", "connection_string": "${KAR_REDIS}"}
    settings.features.registry = {"registry_type": "sql", "path": "${KAR_REGISTRY_URL}"}
    (tmp_path / "kar.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    project = init_project(tmp_path / "p", n_users=5)  # default settings: SQLite, file
    assert yaml.safe_load((project.feature_repo / "feature_store.yaml").read_text())[
        "online_store"
    ] == {"type": "sqlite", "path": "data/online_store.db"}
    loaded = ProjectFolder.load(tmp_path)
    from kar.features import init_feature_repo

    fs = loaded.settings.features
    repo = init_feature_repo(tmp_path / "fr", online_store=fs.online_store, registry=fs.registry)
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["online_store"]["connection_string"] == "${KAR_REDIS}"  # no secret in file
    assert config["registry"] == {"registry_type": "sql", "path": "${KAR_REGISTRY_URL}"}
