"""`kar train` publishes a trained, tuned adaptor whatever the gate says, and the lineage of
the published feature views says whether knowledge beat no knowledge on validation
(`kar train`, `kar publish [--require-gain]`, `kar features list`), on small demo projects
with knowledge vectors written directly (no LLM): random (useless) or the demo's hidden
traits and tastes (informative)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from kar.cli import app
from kar.data.demo import HIDDEN_TRAITS, simulate_demo
from kar.encoding import EntityVectors
from kar.models.toydata import random_knowledge
from kar.models.tuning import KNOWLEDGE_GRID
from kar.pipeline import init_project

N_USERS = 60
runner = CliRunner()


def _vectors(informative: bool) -> EntityVectors:
    world = simulate_demo(n_users=N_USERS, seed=0)  # the world init_project writes
    if not informative:
        users = random_knowledge(world.users["user_id"].to_list(), 5, seed=0)
        items = random_knowledge(world.items["item_id"].to_list(), 5, seed=1)
        return EntityVectors(users, items, 5, "random-vectors")
    tastes = ("w_tone", "w_acclaim", "w_era", "w_pace", "bias")
    users = world.users.select(
        pl.col("user_id").alias("entity_id"),
        pl.concat_list(*tastes).cast(pl.List(pl.Float32)).alias("vector"),
    )
    items = world.items.select(
        pl.col("item_id").alias("entity_id"),
        pl.concat_list(*HIDDEN_TRAITS, pl.lit(1.0)).cast(pl.List(pl.Float32)).alias("vector"),
    )
    return EntityVectors(users, items, 5, "hidden-traits")


def _project(root: Path, informative: bool) -> Path:
    folder = init_project(root, n_users=N_USERS)
    training = folder.settings.training
    training.eval_seeds = [0]
    default = {"batch_size": 128, "max_epochs": 6}
    if not informative:  # random vectors still identify entities: a strict gate
        default["knowledge_gate"] = 0.99
    training.backbone_configs = {"default": default}
    folder.save()
    _vectors(informative).save(folder.encoded_dir)
    return root


def _kar(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    return text


@pytest.fixture(scope="module")
def useless(tmp_path_factory) -> Path:
    return _project(tmp_path_factory.mktemp("lineage") / "useless", informative=False)


@pytest.fixture(scope="module")
def informative(tmp_path_factory) -> Path:
    return _project(tmp_path_factory.mktemp("lineage") / "informative", informative=True)


def _initial_adaptor(root: Path) -> torch.nn.Module:
    """The adaptor as `kar train` initialises it for the project's seed (0)."""
    from kar.adaptor import build_adaptor
    from kar.models.train import set_seed
    from kar.pipeline import adaptor_config
    from kar.project import ProjectFolder

    set_seed(0)
    return build_adaptor(adaptor_config(ProjectFolder.load(root)), 5)


def test_useless_knowledge_still_publishes_a_trained_adaptor_and_says_so(useless) -> None:
    from kar.adaptor.trained import TrainedAdaptor
    from kar.features import list_knowledge_views

    root = str(useless)
    trained = _kar("train", "-p", root)
    assert "configuration (search on validation):" in trained and '"lr":' in trained
    assert "gate closed" in trained and "knowledge did NOT beat no knowledge" in trained
    saved = TrainedAdaptor.load(useless / "artifacts" / "adaptor")
    initial = dict(_initial_adaptor(useless).named_parameters())
    params = dict(saved.module.named_parameters())
    assert params.keys() == initial.keys()
    assert any(not torch.equal(params[k], initial[k]) for k in params)  # trained weights
    metrics = saved.metrics
    assert metrics["gate_open"] is False and metrics["best_trained_epoch"] >= 1
    assert metrics["gate_probability"] < 0.99 and metrics["tuning"]["config"]["lr"] > 0
    # the search was logged for `kar evaluate` (the none model and the knowledge arm's
    # grid point, the first seed): the evaluation reuses both instead of training them again
    runs = (useless / "artifacts" / "reports" / "evaluate_runs.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in runs]
    assert [row["arm"] for row in logged] == ["none", "knowledge"]
    knowledge_point = json.loads(logged[1]["config"])
    none_point = json.loads(logged[0]["config"])
    extra = {k: v for k, v in knowledge_point.items() if k not in none_point}
    assert extra in KNOWLEDGE_GRID and metrics["tuning"]["config"] == knowledge_point

    # --require-gain refuses: exit 1, one message, nothing written to the repository
    repo = useless / "feature_repo"
    settings = (repo / "kar_repo.json").read_text()
    refused = runner.invoke(app, ["publish", "--require-gain", "-p", root])
    message = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "knowledge did NOT beat no knowledge" in message and "nothing published" in message
    assert list((repo / "data").rglob("*.parquet")) == []
    assert (repo / "kar_repo.json").read_text() == settings

    published = _kar("publish", "-p", root)
    verdicts = [s for s in published.split("adaptor: ")[1:] if "did NOT beat" in s]
    assert len(verdicts) == 1  # said once, in one line
    views = {v["name"]: v for v in list_knowledge_views(repo)}
    for name in ("user_knowledge", "item_knowledge"):
        tags = views[name]["tags"]
        assert tags["kar.gate"] == "closed" and tags["kar.trained_epoch"] != "0"
        assert float(tags["kar.valid_auc_none"]) > 0 and tags["kar.knowledge_gain"][0] in "+-"

    listed = _kar("features", "list", "-p", root)
    assert "user_knowledge_vector: Array(Float32)" in listed
    assert "user_knowledge_code: Int64" in listed
    assert "Array(Float32), Int64" not in listed  # each feature with its own type
    assert "item_knowledge, user_knowledge: knowledge did NOT beat no knowledge" in listed


def test_informative_knowledge_opens_the_gate_and_the_lineage_says_so(informative) -> None:
    from kar.features import list_knowledge_views

    root = str(informative)
    trained = _kar("train", "-p", root)
    assert "gate open" in trained and "knowledge beat no knowledge" in trained
    again = _kar("train", "-p", root)  # the configuration now comes from the run log
    assert "configuration (evaluation run log):" in again
    assert (
        trained.split("configuration")[1].split("}")[0].split(":", 1)[1]
        == (again.split("configuration")[1].split("}")[0].split(":", 1)[1])
    )
    published = _kar("publish", "--require-gain", "-p", root)
    assert "adaptor: knowledge beat no knowledge" in published
    views = {v["name"]: v for v in list_knowledge_views(informative / "feature_repo")}
    tags = views["item_knowledge"]["tags"]
    assert tags["kar.gate"] == "open" and tags["kar.knowledge_gain"].startswith("+")
    assert float(tags["kar.gate_probability"]) >= 0.9
    listed = _kar("features", "list", "-p", root)
    assert "item_knowledge, user_knowledge: knowledge beat no knowledge" in listed
