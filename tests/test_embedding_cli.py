"""``kar embed``, ``kar embed tune``, ``kar embed users`` and ``kar features similar`` on the
demo project, end to end on the real encoder and the real PostgreSQL + pgvector."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kar.cli import app

runner = CliRunner()


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


def _set_embedding(target: Path, section: dict) -> None:
    """Write ``section`` as kar.yaml's ``embedding:`` section."""
    config = yaml.safe_load((target / "kar.yaml").read_text())
    config["embedding"] = section
    (target / "kar.yaml").write_text(yaml.safe_dump(config))


def test_bad_embedding_setting_names_the_field(tmp_path: Path) -> None:
    target = tmp_path / "proj"
    assert runner.invoke(app, ["init", str(target), "--users", "5"]).exit_code == 0
    _set_embedding(target, {"tune": {"method": "lora"}})
    result = runner.invoke(app, ["embed", "-p", str(target), "--no-publish"])
    text = result.output.replace("\n", "")  # rich wraps long lines
    assert result.exit_code == 1
    assert "kar.yaml: field 'embedding.tune.method'" in text and "'mlp'" in text


def test_bad_setting_in_a_legacy_embedding_yaml_names_the_field(tmp_path: Path) -> None:
    target = tmp_path / "proj"
    assert runner.invoke(app, ["init", str(target), "--users", "5"]).exit_code == 0
    (target / "embedding.yaml").write_text("tune: {method: lora}\n")
    result = runner.invoke(app, ["embed", "-p", str(target), "--no-publish"])
    text = result.output.replace("\n", "")  # rich wraps long lines
    assert result.exit_code == 1
    assert "embedding.yaml: field 'tune.method'" in text and "'mlp'" in text


@pytest.mark.slow
def test_embed_tune_users_and_similar_through_feast(tmp_path: Path) -> None:
    _pgvector_or_skip()
    target = tmp_path / "proj"
    assert runner.invoke(app, ["init", str(target), "--users", "40"]).exit_code == 0
    settings = {
        "tune": {"epochs": 2},
        "tower": {"epochs": 2, "d_model": 32, "heads": 2},
        "feast": {"project": f"kar_emb_cli_{uuid.uuid4().hex[:8]}"},
    }
    _set_embedding(target, settings)
    try:
        out = runner.invoke(app, ["embed", "-p", str(target)])
        assert out.exit_code == 0, out.output
        assert "384-dim" in out.output and "published" in out.output
        out = runner.invoke(app, ["embed", "tune", "-p", str(target)])
        assert out.exit_code == 0, out.output
        assert "tuned (mlp)" in out.output and "+mlp@" in out.output
        out = runner.invoke(app, ["embed", "users", "-p", str(target)])
        assert out.exit_code == 0, out.output
        assert "user vectors" in out.output and "published" in out.output
        from kar.encoding import EntityVectors

        items = EntityVectors.load(target / "artifacts" / "embedding" / "items")
        first = items.items["entity_id"][0]
        out = runner.invoke(app, ["features", "similar", first, "-k", "5", "-p", str(target)])
        assert out.exit_code == 0, out.output
        assert f"items similar to {first}" in out.output
        assert out.output.count("\n│ ") >= 5  # five result rows
        missing = runner.invoke(app, ["features", "similar", "no-such-item", "-p", str(target)])
        assert missing.exit_code == 1 and "no embedding" in missing.output.replace("\n", "")
    finally:
        from kar.features.repo import feature_store

        try:
            store = feature_store(target / "embedding_repo")
            store.provider.teardown_infra(store.project, store.list_feature_views(), [])
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"teardown failed: {exc}")
