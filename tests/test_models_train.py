"""Backbones and joint training: variants train, seeds reproduce, early stopping, knowledge lift."""

from __future__ import annotations

import math

import pytest
import torch

from kar.adaptor import AdaptorConfig
from kar.errors import ConfigError
from kar.models import available_models
from kar.models.inputs import CTRFeatures
from kar.models.toydata import simple_time_split, synthetic_dataset, synthetic_knowledge
from kar.models.train import evaluate, train_ctr

SMALL = {"max_epochs": 2, "batch_size": 256, "embedding_dim": 8, "mlp_hidden": [32]}


def build(informative: bool, **kwargs) -> CTRFeatures:
    ds, truth = synthetic_dataset(**kwargs)
    users, items = synthetic_knowledge(ds, truth, dim=8, informative=informative)
    split = simple_time_split(ds.interactions)
    return CTRFeatures.build(
        ds, split, history_len=10, knowledge_users=users, knowledge_items=items
    )


@pytest.fixture(scope="module")
def informative() -> CTRFeatures:
    return build(True)


@pytest.fixture(scope="module")
def small() -> CTRFeatures:
    return build(False, n_users=100, n_items=300, n_rows=3000)


def test_registry():
    assert {"deepfm", "din"} <= set(available_models())
    with pytest.raises(ConfigError, match="unknown backbone 'nope'.*deepfm"):
        train_ctr(None, "nope")  # type: ignore[arg-type]


def test_bad_model_config_is_named(small):
    with pytest.raises(ConfigError, match="(?s)invalid din config.*embeding_dim"):
        train_ctr(small, "din", {"embeding_dim": 8})


@pytest.mark.parametrize("backbone", ["deepfm", "din"])
@pytest.mark.parametrize("adaptor", [None, "hea", "moe", "mlp"])
def test_every_backbone_and_adaptor_trains(small, backbone, adaptor):
    config = AdaptorConfig.load(adaptor) if adaptor else None
    features = small if adaptor else small.without_knowledge()
    result = train_ctr(features, backbone, SMALL, config, seed=1)
    assert 0.0 < result.test_auc < 1.0 and math.isfinite(result.test_logloss)
    assert 0 <= result.best_epoch <= result.epochs_run <= 2  # 0: the starting point kept
    assert (result.adaptor is None) == (adaptor is None)
    if adaptor:
        # the adaptor was trained: its weights moved away from their initial values, unless
        # validation kept the starting point (epoch 0), which is then restored exactly
        fresh = train_ctr(small, backbone, {**SMALL, "lr": 1e-12, "max_epochs": 1}, config, 1)
        before = fresh.adaptor.state_dict()
        after = result.adaptor.state_dict()
        moved = any(not torch.allclose(before[k], after[k]) for k in after)
        assert moved == (result.best_epoch > 0)


def test_same_seed_same_metrics_other_seed_differs(small):
    config = AdaptorConfig.load("hea")
    a = train_ctr(small, "din", SMALL, config, seed=3)
    b = train_ctr(small, "din", SMALL, config, seed=3)
    c = train_ctr(small, "din", SMALL, config, seed=4)
    assert a.test_auc == b.test_auc and a.valid_logloss == b.valid_logloss
    assert a.history == b.history
    assert c.test_auc != a.test_auc


def test_early_stopping_restores_best_epoch(small):
    # a large learning rate overfits after a few epochs, so validation AUC peaks early
    cfg = {**SMALL, "max_epochs": 12, "patience": 2, "lr": 0.02}
    result = train_ctr(small.without_knowledge(), "deepfm", cfg, seed=0)
    aucs = [h["valid_auc"] for h in result.history]  # epoch 0 (the start), 1, 2, ...
    assert [h["epoch"] for h in result.history] == list(range(len(aucs)))
    assert result.best_epoch == aucs.index(max(aucs))
    assert result.epochs_run < 12 and result.epochs_run == result.best_epoch + 2
    assert result.valid_auc == max(aucs)
    # the returned model is the best epoch's, not the last one's
    restored_auc, _ = evaluate(result.model, small.tensors("valid"))
    assert restored_auc == pytest.approx(max(aucs), abs=1e-9)
    assert aucs[-1] < max(aucs)


def test_adaptor_without_knowledge_is_an_error(small):
    with pytest.raises(ConfigError, match="no knowledge"):
        train_ctr(small.without_knowledge(), "deepfm", SMALL, AdaptorConfig.load("mlp"))


@pytest.mark.parametrize("backbone", ["deepfm", "din"])
def test_informative_knowledge_lifts_auc(informative, backbone):
    cfg = {**SMALL, "max_epochs": 6, "lr": 3e-3}
    without = train_ctr(informative.without_knowledge(), backbone, cfg, seed=0)
    with_k = train_ctr(informative, backbone, cfg, AdaptorConfig.load("hea"), seed=0)
    assert with_k.test_auc > without.test_auc + 0.005
    # warm-started from the model without knowledge, it gains as well
    warm = train_ctr(
        informative, backbone, cfg, AdaptorConfig.load("hea"), seed=0,
        init_state=without.model.state_dict(),
    )  # fmt: skip
    assert warm.test_auc > without.test_auc + 0.005 and warm.best_epoch > 0


def test_warm_start_begins_as_the_model_without_knowledge(small):
    plain = train_ctr(small.without_knowledge(), "deepfm", SMALL, seed=0)
    # no learning at all: the knowledge model stays the model without knowledge, exactly
    frozen = {**SMALL, "lr": 1e-12, "max_epochs": 1}
    warm = train_ctr(
        small, "deepfm", frozen, AdaptorConfig.load("hea"), seed=0,
        init_state=plain.model.state_dict(),
    )  # fmt: skip
    assert warm.history[0]["valid_auc"] == pytest.approx(plain.valid_auc, abs=1e-9)
    assert warm.test_auc == pytest.approx(plain.test_auc, abs=1e-6)
    # a model of another shape is refused, naming what does not fit
    other = train_ctr(small.without_knowledge(), "din", SMALL, seed=0)
    with pytest.raises(ConfigError, match="cannot warm-start deepfm"):
        train_ctr(
            small, "deepfm", SMALL, AdaptorConfig.load("hea"), init_state=other.model.state_dict()
        )


def test_wide_term_starts_at_the_counters_logistic_regression(small):
    from sklearn.linear_model import LogisticRegression

    result = train_ctr(small.without_knowledge(), "deepfm", {**SMALL, "lr": 1e-12}, seed=0)
    train = small.tensors("train")
    lr = LogisticRegression().fit(train["counters"].numpy(), train["label"].numpy())
    wide = result.model.backbone.wide
    assert torch.allclose(wide.weight, torch.from_numpy(lr.coef_).float(), atol=1e-4)


def test_the_gate_closes_on_useless_knowledge_and_opens_on_informative(small, informative):
    cfg = {**SMALL, "max_epochs": 4, "lr": 3e-3}
    plain = train_ctr(small.without_knowledge(), "deepfm", cfg, seed=0)
    # random knowledge, trained fresh: whatever it learns must beat the model without
    # knowledge on validation, or the result is that model, exactly
    useless = train_ctr(
        small, "deepfm", cfg, AdaptorConfig.load("hea"), seed=0,
        fallback_state=plain.model.state_dict(),
    )  # fmt: skip
    if not useless.gate_open:
        assert useless.test_auc == pytest.approx(plain.test_auc, abs=1e-6)
        assert useless.best_epoch == 0
    # the gate is the only difference: without a fallback there is no gate
    assert train_ctr(small, "deepfm", cfg, AdaptorConfig.load("hea"), seed=0).gate_open is None
    # knowledge that reveals the label's driver passes it (seed 7: a clear margin; on this
    # small set the gate's probability is 0.8-1.0 from seed to seed, seed 0 sits at 0.9)
    base = train_ctr(informative.without_knowledge(), "deepfm", cfg, seed=7)
    useful = train_ctr(
        informative, "deepfm", cfg, AdaptorConfig.load("hea"), seed=7,
        fallback_state=base.model.state_dict(),
    )  # fmt: skip
    assert useful.gate_open and useful.test_auc > base.test_auc


def test_win_probability_of_the_paired_bootstrap():
    import numpy as np

    from kar.models.metrics import auc_win_probability

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    good = labels + rng.normal(0, 0.8, 2000)
    noise = rng.normal(0, 1, 2000)
    assert auc_win_probability(labels, good, noise) == 1.0
    assert auc_win_probability(labels, noise, good) == 0.0
    assert auc_win_probability(labels, good, good) == 0.5  # ties count half


def test_knowledge_dropout_drops_whole_rows_in_training_only(small):
    from kar.models.train import build_model

    model, _ = build_model(
        small, "deepfm", {**SMALL, "knowledge_dropout": 0.5}, AdaptorConfig.load("mlp")
    )
    inputs = model.backbone.inputs
    with torch.no_grad():  # open the knowledge projections (they start at zero)
        inputs.user_proj.weight.fill_(0.5)
        inputs.item_proj.weight.fill_(0.5)
    batch = {k: v[:256] for k, v in small.tensors("train").items()}
    plain_user = inputs.user(batch["user"])

    def user_field(train: bool) -> torch.Tensor:
        model.train(train)
        captured = {}
        hook = inputs.register_forward_hook(lambda m, a, out: captured.update(f=out.fields))
        with torch.no_grad():
            torch.manual_seed(0)
            model(batch)
        hook.remove()
        return captured["f"][:, 0]

    kept = ~torch.isclose(user_field(True), plain_user).all(1)
    assert 0.3 < kept.float().mean() < 0.7  # about half the rows keep their knowledge
    assert (~torch.isclose(user_field(False), plain_user).all(1)).all()  # eval: every row


def _parameters_differ(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    return any(not torch.equal(pa[k], pb[k]) for k in pa)


def test_the_published_adaptor_is_trained_even_when_the_warm_start_wins(small, informative):
    from kar.adaptor import build_adaptor
    from kar.adaptor.verdict import gain_lineage, knowledge_won
    from kar.models.train import set_seed

    cfg = {**SMALL, "max_epochs": 4, "lr": 3e-3}
    plain = train_ctr(small.without_knowledge(), "deepfm", cfg, seed=0)
    state = plain.model.state_dict()
    config = AdaptorConfig.load("hea")
    useless = train_ctr(small, "deepfm", cfg, config, seed=0, init_state=state,
                        fallback_state=state)  # fmt: skip
    # random knowledge: no trained epoch beats the warm start, and the gate closes
    assert useless.best_epoch == 0 and useless.gate_open is False
    set_seed(0)  # the adaptor's initialisation, as train_ctr builds it for seed 0
    initial = build_adaptor(config, small.knowledge_dim)
    assert not _parameters_differ(useless.adaptor, initial)  # kar's arm: the start
    published = useless.trained_adaptor().module
    assert _parameters_differ(published, initial)  # the published one is trained
    assert useless.best_trained_epoch is not None and useless.best_trained_epoch >= 1
    epoch = useless.history[useless.best_trained_epoch]
    assert (
        useless.ungated_valid_auc
        == epoch["valid_auc"]
        == max(h["valid_auc"] for h in useless.history[1:])
    )
    # the published model's validation AUC against the model without knowledge
    assert useless.none_valid_auc == pytest.approx(plain.valid_auc, abs=1e-9)
    assert useless.knowledge_valid_auc == pytest.approx(useless.ungated_valid_auc, abs=1e-9)
    assert useless.knowledge_gain < 0 and 0.0 <= useless.gate_probability < 0.9
    # gated: the model without knowledge; ungated: the trained knowledge model
    assert useless.test_auc == pytest.approx(plain.test_auc, abs=1e-6)
    assert useless.ungated_test_auc != pytest.approx(useless.test_auc, abs=1e-6)
    metrics = useless.trained_adaptor().metrics
    assert metrics["gate_open"] is False and metrics["best_trained_epoch"] >= 1
    lineage = gain_lineage(metrics)
    assert lineage["gate"] == "closed" and not knowledge_won(lineage)
    # knowledge that reveals the label's driver: the gate opens, the lineage says so
    base = train_ctr(informative.without_knowledge(), "deepfm", cfg, seed=0)
    useful = train_ctr(
        informative, "deepfm", cfg, config, seed=0,
        init_state=base.model.state_dict(), fallback_state=base.model.state_dict(),
    )  # fmt: skip
    assert useful.gate_open and useful.best_epoch == useful.best_trained_epoch >= 1
    assert useful.knowledge_gain > 0 and useful.gate_probability >= 0.9
    assert useful.ungated_test_auc == useful.test_auc  # the gate kept the trained model
    lineage = gain_lineage(useful.trained_adaptor().metrics)
    assert lineage["gate"] == "open" and knowledge_won(lineage)
    assert lineage["knowledge_gain"].startswith("+")
