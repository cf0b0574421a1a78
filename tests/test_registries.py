"""Plugin registries (kar.plugins), the way Feast's are: a backend, a dataset kind and a
backbone of one's own, each named by its dotted path in kar.yaml, run through kar's own
stages without a line of kar changed; a bad dotted path is a one-line error naming the field.

The plugins live in a module written to a temporary folder on ``sys.path`` (a user's own
package): a deterministic stand-in LLM (a named stand-in: this tests the plugin point, not a
model), kar's toy dataset as a dataset kind, and a small real torch backbone trained on it.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from kar.errors import ConfigError
from kar.plugins import BACKBONES, BACKENDS, DATASET_KINDS

PLUGIN_MODULE = "my_kar_plugins"
PLUGIN_SOURCE = '''
"""A user's own kar plugins (not part of kar): a backend, a dataset kind, a backbone."""

from __future__ import annotations

import torch
from pydantic import Field

from kar.models.base import CTRModel, FeatureSpec, Inputs
from kar.models.config import ModelConfig
from kar.models.layers import mlp
from kar.models.toydata import synthetic_dataset
from kar.records import GenerationOutput

CALLS: list[int] = []  # prompts each generate() call got


class EchoBackend:
    """A deterministic stand-in LLM: restates the question's last words."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.model_name = f"echo-{prefix}"

    @classmethod
    def settings_model_name(cls, gen) -> str:
        return f"echo-{gen.plugin.get('prefix', 'plain')}"

    @classmethod
    def from_settings(cls, gen) -> "EchoBackend":
        return cls(gen.plugin.get("prefix", "plain"))

    def generate(self, batch, params):
        CALLS.append(len(batch))
        outputs = []
        for messages in batch:
            words = " ".join(messages[-1]["content"].split()[-6:])
            text = f"{self.prefix}: this one is about {words}."
            outputs.append(GenerationOutput(text=text, prompt_tokens=6,
                                            completion_tokens=len(text.split()),
                                            finish_reason="stop"))
        return outputs


def load_toy(project):
    """A dataset kind: kar's synthetic toy data, sized by kar.yaml's dataset.plugin."""
    opts = project.settings.dataset.plugin
    dataset, _ = synthetic_dataset(n_users=opts["n_users"], n_items=opts["n_items"],
                                   n_rows=opts["n_rows"], seed=0)
    return dataset


class TinyConfig(ModelConfig):
    """TinyCTR: one small tower over the field embeddings."""

    tower: int = Field(8, ge=1)


class TinyCTR(CTRModel):
    """A backbone of one's own: a one-hidden-layer tower over the flattened fields."""

    config_class = TinyConfig

    def __init__(self, spec: FeatureSpec, config: TinyConfig, knowledge_dim: int = 0) -> None:
        super().__init__(spec, config, knowledge_dim)
        width = self.inputs.n_fields * config.embedding_dim + self.inputs.dense_dim
        self.tower = mlp(width, [config.tower], 1, config.dropout)

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([inputs.fields.flatten(1), inputs.dense], dim=-1)
        return self.tower(x).squeeze(-1)
'''
N_USERS, N_ITEMS = 40, 60
KAR_YAML = {
    "name": "plugins",
    "scenario": "movies",
    "dataset": {"kind": f"{PLUGIN_MODULE}.load_toy",
                "plugin": {"n_users": N_USERS, "n_items": N_ITEMS, "n_rows": 1500}},
    "generation": {"backend": f"{PLUGIN_MODULE}.EchoBackend", "plugin": {"prefix": "echo"},
                   "batch_size": 16},
    "training": {"backbone": f"{PLUGIN_MODULE}.TinyCTR", "eval_seeds": [0],
                 "model_config": {"default": {"max_epochs": 3, "batch_size": 256},
                                  f"{PLUGIN_MODULE}.TinyCTR": {"tower": 6}}},
}  # fmt: skip


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The plugin module, importable from a folder outside kar."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / f"{PLUGIN_MODULE}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(folder))
    yield __import__(PLUGIN_MODULE)
    sys.modules.pop(PLUGIN_MODULE, None)


def _project(root: Path, settings: dict) -> Path:
    root.mkdir(parents=True)
    (root / "kar.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return root


@pytest.mark.slow
def test_plugins_by_dotted_path_run_through_kars_stages(plugins, tmp_path: Path) -> None:
    """kar.yaml names all three plugins; kar loads the dataset with the plugin loader, asks
    the plugin backend every question (stored under the id it declares, so a rerun asks
    nothing), and trains the published adaptor with the plugin backbone."""
    from kar.encoding import EntityVectors
    from kar.generation import KnowledgeStore
    from kar.models.toydata import synthetic_dataset, synthetic_knowledge
    from kar.pipeline import load_data, run_generate, run_train
    from kar.project import ProjectFolder

    torch.set_num_threads(1)
    folder = ProjectFolder.load(_project(tmp_path / "p", KAR_YAML))
    dataset, _ = load_data(folder)
    assert dataset.name == "synthetic" and dataset.users.height == N_USERS

    reports = run_generate(folder, progress=False)
    assert {k: r.llm_calls for k, r in reports.items()} == {
        "user_preference": N_USERS, "item_fact": N_ITEMS}  # fmt: skip
    assert max(plugins.CALLS) == 16  # batched by generation.batch_size
    answers = KnowledgeStore(folder.knowledge_store_url).answers(scenario="movies")
    assert set(answers["model"]) == {"echo-echo"} and answers.height == N_USERS + N_ITEMS
    assert answers["answer"][0].startswith("echo: this one is about")
    again = run_generate(folder, progress=False)
    assert sum(r.llm_calls for r in again.values()) == 0

    # the knowledge vectors are written directly (encoding is not what this test is about)
    _, truth = synthetic_dataset(n_users=N_USERS, n_items=N_ITEMS, n_rows=1500, seed=0)
    users, items = synthetic_knowledge(dataset, truth, dim=8)
    items = items.with_columns(pl.col("vector").cast(pl.List(pl.Float32)))
    EntityVectors(users, items, 8, "toy-knowledge").save(folder.encoded_dir)
    result = run_train(folder, progress=False)
    backbone = result.model.backbone
    assert type(backbone) is plugins.TinyCTR and backbone.config.tower == 6  # its own config
    assert result.valid_auc > 0.7  # it learned the toy data's hidden item bit
    assert (folder.knowledge_dir / "item_knowledge.parquet").exists()


def test_registered_names_are_what_kar_yaml_accepts() -> None:
    """The allowed names come from the registries (no Literal repeats them): each
    registered entry imports to a class of its kind, names are case-insensitive."""
    from kar.project import ProjectSettings

    for registry in (BACKENDS, DATASET_KINDS, BACKBONES):
        for name in registry:
            assert isinstance(registry.load(name), registry.protocol), name
            assert registry.check(name.upper()) == name
    training = ProjectSettings.model_validate({"training": {"backbone": "DCNv2"}}).training
    assert training.backbone == "dcnv2"
    for field, names in (("backend", BACKENDS), ("kind", DATASET_KINDS)):
        settings = ProjectSettings.model_fields["generation" if field == "backend" else "dataset"]
        description = settings.annotation.model_fields[field].description  # type: ignore[union-attr]
        assert all(name in description for name in names.names())


@pytest.mark.parametrize(
    ("section", "value", "names"),
    [
        ({"generation": {"backend": "my_missing_pkg.Backend"}}, "generation.backend",
         ["cannot import 'my_missing_pkg.Backend'", "No module named 'my_missing_pkg'"]),
        ({"training": {"backbone": "kar.models.deepfm.NoSuchModel"}}, "training.backbone",
         ["cannot import 'kar.models.deepfm.NoSuchModel'", "has no attribute 'NoSuchModel'"]),
        ({"generation": {"backend": "kar.models.deepfm.DeepFM"}}, "generation.backend",
         ["'kar.models.deepfm.DeepFM' is not a BackendClass", "from_settings"]),
        ({"dataset": {"kind": "kar.data.kinds.MOVIELENS_LABEL_THRESHOLD"}}, "dataset.kind",
         ["is not a DatasetLoader"]),
        ({"generation": {"backend": "tgi"}}, "generation.backend",
         ["unknown backend 'tgi'", "auto | transformers | vllm"]),
        ({"training": {"eval_backbones": ["din", "nope.Nope"]}}, "training.eval_backbones",
         ["cannot import 'nope.Nope'"]),
    ],
    ids=["missing-module", "missing-class", "not-a-backend", "not-a-loader", "unknown-name",
         "eval-backbones"],
)  # fmt: skip
def test_a_bad_dotted_path_is_a_one_line_error_naming_the_field(
    tmp_path: Path, section: dict, value: str, names: list[str]
) -> None:
    from kar.cli import app
    from kar.project import ProjectFolder

    root = _project(tmp_path / "p", section)
    with pytest.raises(ConfigError) as caught:
        ProjectFolder.load(root)
    message = str(caught.value)
    assert "\n" not in message and f"field '{value}'" in message
    assert all(name in message for name in names), message
    result = CliRunner().invoke(app, ["generate", "-p", str(root)], env={"COLUMNS": "400"})
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and value in errors[0], result.output


def test_get_model_takes_a_dotted_path(plugins) -> None:
    from kar.models.registry import get_model

    entry = get_model(f"{PLUGIN_MODULE}.TinyCTR")
    assert entry.model is plugins.TinyCTR and entry.config is plugins.TinyConfig
    with pytest.raises(ConfigError, match="unknown backbone 'nope'.*deepfm"):
        get_model("nope")
