"""Model zoo: every backbone builds from its config, trains with and without knowledge."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from kar.adaptor import AdaptorConfig
from kar.errors import ConfigError
from kar.models import available_models
from kar.models.inputs import CTRFeatures
from kar.models.toydata import simple_time_split, synthetic_dataset, synthetic_knowledge
from kar.models.train import build_model, train_ctr

NEW = ["dcnv2", "autoint", "xdeepfm", "fibinet", "dien"]
SMALL = {"max_epochs": 4, "batch_size": 256, "embedding_dim": 8, "mlp_hidden": [32], "lr": 3e-3}


@pytest.fixture(scope="module")
def features() -> CTRFeatures:
    # many items, few rows each: the item counters barely know the hidden bit, knowledge does
    ds, truth = synthetic_dataset(n_users=100, n_items=1500, n_rows=3000)
    users, items = synthetic_knowledge(ds, truth, dim=8, informative=True)
    split = simple_time_split(ds.interactions)
    return CTRFeatures.build(
        ds, split, history_len=10, knowledge_users=users, knowledge_items=items
    )


def test_at_least_seven_backbones_listed():
    assert set(NEW) | {"deepfm", "din"} <= set(available_models())
    out = CliRunner().invoke(__import__("kar.cli", fromlist=["app"]).app, ["models", "list"])
    assert out.exit_code == 0, out.output
    assert all(name in out.output for name in [*NEW, "deepfm", "din"])


@pytest.mark.parametrize("backbone", NEW)
def test_backbone_trains_and_uses_knowledge(features, backbone):
    plain = train_ctr(features.without_knowledge(), backbone, SMALL, seed=0)
    know = train_ctr(features, backbone, SMALL, AdaptorConfig.load("hea"), seed=0)
    for r in (plain, know):
        assert 0.0 < r.test_auc < 1.0 and math.isfinite(r.test_logloss)
    # the item knowledge reveals the bit that drives the label: it must help every backbone
    # (DIEN, whose auxiliary loss competes for the few steps, by less: +0.004 here)
    assert know.test_auc > plain.test_auc + (0.0 if backbone == "dien" else 0.03)


@pytest.mark.parametrize("backbone", NEW)
def test_config_fields_are_validated(features, backbone):
    with pytest.raises(ConfigError, match=f"invalid {backbone} config"):
        build_model(features, backbone, {"no_such_field": 1})


def test_config_extras_change_the_model(features):
    small, _ = build_model(features, "dcnv2", {"cross_layers": 1})
    big, _ = build_model(features, "dcnv2", {"cross_layers": 4})
    assert len(big.backbone.cross) == 4 and len(small.backbone.cross) == 1
    fib, _ = build_model(features, "fibinet", {"bilinear_type": "field_interaction"})
    assert fib.backbone.bilinear.weight.shape[0] == len(fib.backbone.bilinear.rows)


def test_dien_ignores_padding(features):
    """Left padding must not change DIEN's interest: the same sequence with more padding
    in front (a longer history window) gives the same logit."""
    model, _ = build_model(features, "dien", SMALL)
    model.eval()
    batch = {k: v[:64] for k, v in features.tensors("train").items()}
    pad = torch.zeros(64, 5, dtype=torch.long)
    longer = dict(
        batch,
        **{k: torch.cat([pad, batch[k]], 1) for k in ("history", "history_k", "history_label")},
    )
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(longer))
