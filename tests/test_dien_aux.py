"""DIEN's auxiliary next-click loss and the generic auxiliary-loss hook of train_ctr."""

from __future__ import annotations

import pytest
import torch

from kar.models.inputs import CTRFeatures
from kar.models.toydata import simple_time_split, synthetic_dataset
from kar.models.train import build_model, train_ctr

CONFIG = {"max_epochs": 2, "batch_size": 128, "embedding_dim": 8, "patience": 5}


@pytest.fixture(scope="module")
def features() -> CTRFeatures:
    ds, _ = synthetic_dataset(n_users=60, n_items=150, n_rows=1500)
    return CTRFeatures.build(ds, simple_time_split(ds.interactions), history_len=5)


def _batch(features: CTRFeatures, n: int = 256) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in features.tensors("train").items()}


def test_weight_zero_is_the_dien_without_auxiliary_loss(features) -> None:
    result = train_ctr(features, "dien", {**CONFIG, "aux_weight": 0}, seed=0)
    assert result.model.backbone.aux_net is None
    names = {n.split(".")[0] for n, _ in result.model.backbone.named_parameters()}
    assert names == {"inputs", "extractor", "attention", "evolver", "deep", "wide"}
    assert all("aux_loss" not in row for row in result.history)
    model, _ = build_model(features, "dien", {**CONFIG, "aux_weight": 0})
    model.train()
    model(_batch(features))
    assert model.auxiliary_loss() is None  # no term at all, not a zero term


def test_training_loss_includes_the_auxiliary_term(features) -> None:
    result = train_ctr(features, "dien", {**CONFIG, "aux_weight": 1.0}, seed=0)
    trained = [row for row in result.history if row["epoch"] > 0]  # epoch 0: the start
    for row in trained:
        assert row["aux_loss"] > 0.1  # BCE on positive + negative pairs, ~2 ln 2 at start
        ctr_loss = row["train_loss"] - row["aux_loss"]
        assert 0.3 < ctr_loss < 0.8  # the CTR log loss, the rest of the total
    plain = train_ctr(features, "dien", {**CONFIG, "aux_weight": 0}, seed=0)
    assert result.history[1]["train_loss"] > plain.history[1]["train_loss"] + 0.1


def test_auxiliary_gradient_reaches_the_gru_and_weight_scales_it(features) -> None:
    batch = _batch(features)
    losses = {}
    for weight in (1.0, 2.5):
        torch.manual_seed(0)
        model, _ = build_model(features, "dien", {**CONFIG, "aux_weight": weight})
        model.train()
        torch.manual_seed(1)  # the same sampled negatives for both weights
        model(batch)
        aux = model.auxiliary_loss()
        assert aux is not None and aux.item() > 0
        assert model.auxiliary_loss() is None  # reading the term clears it
        aux.backward()
        gru = model.backbone.extractor
        assert gru.weight_ih.grad is not None and gru.weight_ih.grad.abs().sum() > 0
        assert gru.weight_hh.grad is not None and gru.weight_hh.grad.abs().sum() > 0
        assert model.backbone.deep[0].weight.grad is None  # the aux term skips the CTR tower
        losses[weight] = aux.item()
    assert losses[2.5] == pytest.approx(2.5 * losses[1.0], rel=1e-5)

    model.eval()
    with torch.no_grad():
        model(batch)
    assert model.auxiliary_loss() is None  # evaluation adds nothing


def test_histories_without_a_next_click_give_no_auxiliary_loss(features) -> None:
    batch = _batch(features, 64)
    # at most one real item per row (left padding): no (t, t+1) pair
    cleared = {k: batch[k].clone() for k in ("history", "history_k", "history_label")}
    for value in cleared.values():
        value[:, :-1] = 0
    model, _ = build_model(features, "dien", {**CONFIG, "aux_weight": 1.0})
    model.train()
    model({**batch, **cleared})
    aux = model.auxiliary_loss()
    assert aux is not None and aux.item() == 0.0
