"""The kar command: help texts, init, and clear errors (fast: no LLM)."""

from __future__ import annotations

from typer.testing import CliRunner

from kar.cli import app

runner = CliRunner()


def test_help_lists_every_stage() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "generate", "encode", "train", "publish", "evaluate", "quickstart"):
        assert command in result.output


def test_init_creates_a_project_and_refuses_to_overwrite(tmp_path) -> None:
    target = tmp_path / "proj"
    assert runner.invoke(app, ["init", str(target), "--users", "5"]).exit_code == 0
    for name in ("kar.yaml", "data/items.csv", "prompts/demo.yaml", "experts/hea.yaml"):
        assert (target / name).exists(), name
    assert (target / "feature_repo" / "feature_store.yaml").exists()
    again = runner.invoke(app, ["init", str(target)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_stage_without_project_is_a_clear_error(tmp_path) -> None:
    result = runner.invoke(app, ["encode", "-p", str(tmp_path)])
    assert result.exit_code == 1
    assert "kar.yaml" in result.output and "kar init" in result.output


def test_bad_setting_names_the_field(tmp_path) -> None:
    target = tmp_path / "proj"
    runner.invoke(app, ["init", str(target), "--users", "5"])
    config = target / "kar.yaml"
    config.write_text(config.read_text().replace("batch_size: 16", "batch_size: lots"))
    result = runner.invoke(app, ["generate", "-p", str(target)])
    assert result.exit_code == 1 and "generation.batch_size" in result.output


def test_encode_before_generate_says_what_to_run(tmp_path) -> None:
    target = tmp_path / "proj"
    runner.invoke(app, ["init", str(target), "--users", "5"])
    result = runner.invoke(app, ["encode", "-p", str(target)])
    assert result.exit_code == 1 and "kar generate" in result.output


def test_generate_backend_override_is_checked(tmp_path) -> None:
    target = tmp_path / "proj"
    runner.invoke(app, ["init", str(target), "--users", "5"])
    bad = runner.invoke(app, ["generate", "-p", str(target), "--backend", "tgi"])
    assert bad.exit_code == 1 and "backend" in bad.output
    keyless = runner.invoke(app, ["generate", "-p", str(target), "--backend", "openai"])
    assert keyless.exit_code == 1 and "generation.openai.model" in keyless.output
    # the override is for this run only: kar.yaml still names the default backend
    assert "backend: auto" in (target / "kar.yaml").read_text()
