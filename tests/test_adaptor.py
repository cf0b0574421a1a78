"""Adaptors: configs, shapes, gates, and the trained-adaptor folder round trip."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from kar.adaptor import AdaptorConfig, TrainedAdaptor, build_adaptor
from kar.adaptor.experts import HybridExpertAdaptor, MLPAdaptor, MoEAdaptor
from kar.errors import ConfigError, DataValidationError
from kar.models.inputs import CTRFeatures
from kar.models.toydata import (
    random_knowledge,
    simple_time_split,
    synthetic_dataset,
    synthetic_knowledge,
)
from kar.models.train import train_ctr

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("name", "cls", "n_experts"),
    [("hea", HybridExpertAdaptor, 4), ("moe", MoEAdaptor, 4), ("mlp", MLPAdaptor, 0)],
)
def test_bundled_configs_build_and_shapes(name, cls, n_experts):
    config = AdaptorConfig.load(name)
    assert config.type == name and config.out_dim == 32
    adaptor = build_adaptor(config, input_dim=24)
    assert isinstance(adaptor, cls)
    u, i = adaptor(torch.randn(5, 24), torch.randn(7, 24))
    assert u.shape == (5, 32) and i.shape == (7, 32)
    if n_experts:
        gates = adaptor.gate("user", torch.randn(5, 24))
        assert gates.shape == (5, n_experts)
        torch.testing.assert_close(gates.sum(-1), torch.ones(5))


def test_hea_has_shared_and_kind_specific_experts():
    adaptor = build_adaptor(AdaptorConfig(n_shared=1, n_specific=3, out_dim=8), input_dim=6)
    assert len(adaptor.shared) == 1 and len(adaptor.specific["user"]) == 3
    # the output is exactly the gate-weighted sum of the shared + user experts
    x = torch.randn(4, 6)
    experts = torch.stack([e(x) for e in [*adaptor.shared, *adaptor.specific["user"]]], 1)
    expected = (adaptor.gate("user", x).unsqueeze(-1) * experts).sum(1)
    torch.testing.assert_close(adaptor.encode("user", x), expected)
    # user and item outputs differ for the same input (own gates and experts)
    assert not torch.allclose(adaptor.encode("item", x), expected)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        AdaptorConfig.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: moe\nn_shared: 2\nn_specific: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        AdaptorConfig.load(bad)
    bad.write_text("type: hea\nexperts: 3\n")
    with pytest.raises(ConfigError, match="experts"):
        AdaptorConfig.load(bad)
    with pytest.raises(ConfigError, match="input_dim 8"):
        build_adaptor(AdaptorConfig(input_dim=8), input_dim=16)


@pytest.fixture(scope="module")
def trained():
    ds, truth = synthetic_dataset(n_users=100, n_items=300, n_rows=3000)
    users, items = synthetic_knowledge(ds, truth, dim=8)
    features = CTRFeatures.build(
        ds, simple_time_split(ds.interactions), knowledge_users=users, knowledge_items=items
    )
    config = AdaptorConfig.load("hea").model_copy(update={"out_dim": 4, "expert_hidden": [16]})
    result = train_ctr(features, "deepfm", {"max_epochs": 2, "batch_size": 256}, config, seed=0)
    return result, users, items


def test_trained_adaptor_round_trip(trained, tmp_path):
    result, users, items = trained
    adaptor = result.trained_adaptor(encoder="all-MiniLM-L6-v2")
    folder = adaptor.save(tmp_path / "hea")
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "weights.safetensors",
        "metrics.json",
        "manifest.json",  # an artifact (kar.artifacts)
    }
    meta = json.loads((folder / "config.json").read_text())
    assert meta["input_dim"] == 8 and meta["backbone"] == "deepfm" and meta["seed"] == 0
    assert json.loads((folder / "metrics.json").read_text())["test_auc"] == result.test_auc
    users_out, items_out = adaptor.export(users, items)
    assert users_out.columns == ["entity_id", "vector"] and users_out.height == users.height
    assert items_out["vector"].list.len().unique().to_list() == [4]
    loaded = TrainedAdaptor.load(folder)
    assert loaded.encoder == "all-MiniLM-L6-v2" and loaded.config == adaptor.config
    again_users, again_items = loaded.export(users, items)
    assert again_users.equals(users_out) and again_items.equals(items_out)
    # the export is the adaptor the CTR model was trained with
    x = torch.from_numpy(np.array(items["vector"].to_list()[:3], dtype=np.float32))
    with torch.no_grad():
        expected = result.model.adaptor.encode("item", x).numpy()
    np.testing.assert_allclose(np.stack(items_out["vector"].to_list()[:3]), expected, rtol=1e-6)


def test_export_rejects_wrong_dim_and_missing_folder(trained, tmp_path):
    adaptor = trained[0].trained_adaptor()
    with pytest.raises(DataValidationError, match="row 1.*expects 8"):
        adaptor.export(random_knowledge(["u"], 5), random_knowledge(["i"], 8))
    empty_users, _ = adaptor.export(
        pl.DataFrame(schema={"entity_id": pl.Utf8, "vector": pl.List(pl.Float32)}),
        random_knowledge(["i"], 8),
    )
    assert empty_users.height == 0
    with pytest.raises(ConfigError, match="lacks config.json"):
        TrainedAdaptor.load(tmp_path)


def test_input_standardisation_is_fitted_on_training_entities_and_saved(tmp_path):
    ds, truth = synthetic_dataset(n_users=100, n_items=300, n_rows=3000)
    users, items = synthetic_knowledge(ds, truth, dim=8)
    features = CTRFeatures.build(
        ds, simple_time_split(ds.interactions), knowledge_users=users, knowledge_items=items
    )
    config = AdaptorConfig.load("hea").model_copy(
        update={"out_dim": 4, "expert_hidden": [16], "standardize": True}
    )
    result = train_ctr(features, "deepfm", {"max_epochs": 1, "batch_size": 256}, config, seed=0)
    module = result.model.adaptor
    x = torch.from_numpy(np.array(items["vector"].to_list(), dtype=np.float32))
    # fitted on the item vectors the model saw: mean and std per dimension
    torch.testing.assert_close(module.input_mean[1], x.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(module.input_std[1], x.std(0), rtol=1e-4, atol=1e-5)
    folder = result.trained_adaptor().save(tmp_path / "scaled")
    loaded = TrainedAdaptor.load(folder)
    torch.testing.assert_close(loaded.module.input_std, module.input_std)
    # an adaptor folder saved before standardisation existed loads as the identity
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "weights.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("input_")},
              str(folder / "weights.safetensors"))  # fmt: skip
    old = TrainedAdaptor.load(folder)
    assert not old.config.standardize and bool((old.module.input_std == 1).all())
    # off in the config (the default): no scaling at all
    plain = build_adaptor(AdaptorConfig(type="mlp"), 8)
    plain.fit_input_scaler(x, x)
    assert bool((plain.input_mean == 0).all())
