"""docs/configuration.md is generated from kar.yaml's pydantic models and cannot drift
(issue 33): regenerate it (`kar config docs`) and compare with the committed file."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from kar.cli import app
from kar.config_docs import render_configuration_doc
from kar.models.config import ModelConfig
from kar.project import DatasetSettings, ProjectSettings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"


def test_committed_reference_matches_the_models() -> None:
    assert DOC.read_text(encoding="utf-8") == render_configuration_doc(), (
        "docs/configuration.md is stale: run `kar config docs` from the repository root"
    )


def test_every_field_has_type_default_and_text() -> None:
    text = render_configuration_doc()
    for name, info in DatasetSettings.model_fields.items():
        assert info.description, f"dataset.{name} has no Field(description=...)"
        assert f"| `{name}` |" in text
    for name in (*ProjectSettings.model_fields, *ModelConfig.model_fields):
        assert f"| `{name}` |" in text, name
    for section in ("dataset", "split", "generation.speculative", "training", "features"):
        assert f"## `{section}`" in text
    assert "`knowledge_gate` | float (>= 0.0, <= 1.0) | `0.9` |" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and all(not line.endswith("|  |") for line in rows), "a field without text"
    # the pipes inside a cell are escaped, so each row has exactly the table's 4 cells
    assert all(line.replace("\\|", "").count("|") == 5 for line in rows)


def test_models_doc_lists_knowledge_gate() -> None:
    assert "`knowledge_gate=0.9`" in (ROOT / "docs" / "models.md").read_text(encoding="utf-8")


def test_kar_config_docs_writes_it(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    result = CliRunner().invoke(app, ["config", "docs", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == render_configuration_doc()
