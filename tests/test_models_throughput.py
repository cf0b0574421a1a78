"""CTR training throughput (issue 34): the fast paths compute what the reference ops did.

Each fast part is checked against its reference on real modules: the index_add embedding
backward against nn.Embedding's, DIN's split first attention layer against the concatenated
input, fused Adam against Adam's loop, the epoch's batches against the rows, batched
prediction against one pass over the split, and a whole training run against the reference.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from kar.adaptor import AdaptorConfig
from kar.models import available_models
from kar.models.base import IndexEmbedding, use_reference_ops
from kar.models.inputs import CTRFeatures
from kar.models.layers import dropout_threshold, keep_mask, mlp, relu_dropout
from kar.models.toydata import simple_time_split, synthetic_dataset, synthetic_knowledge
from kar.models.train import (
    KNOWLEDGE_KEYS,
    build_model,
    epoch_batches,
    make_optimiser,
    predict,
    train_ctr,
)

SMALL = {"max_epochs": 2, "batch_size": 256, "embedding_dim": 8, "mlp_hidden": [32]}


@pytest.fixture(scope="module")
def small() -> CTRFeatures:
    ds, truth = synthetic_dataset(n_users=80, n_items=200, n_rows=2500)
    users, items = synthetic_knowledge(ds, truth, dim=8, informative=True)
    split = simple_time_split(ds.interactions)
    return CTRFeatures.build(ds, split, history_len=10, knowledge_users=users,
                             knowledge_items=items)  # fmt: skip


def _batch(features: CTRFeatures, n: int = 200) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in features.tensors("train").items()}


def _forward_backward(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple:
    model.zero_grad()
    out = model(batch)
    (out * torch.linspace(-1, 1, len(out))).sum().backward()  # a gradient that is not uniform
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                          if p.grad is not None}  # fmt: skip


@pytest.mark.parametrize("backbone", available_models())
@pytest.mark.parametrize("knowledge", [False, True])
def test_fast_ops_give_the_reference_outputs_and_gradients(small, backbone, knowledge):
    features = small if knowledge else small.without_knowledge()
    adaptor = AdaptorConfig.load("hea") if knowledge else None
    torch.manual_seed(0)
    config = {**SMALL, "dropout": 0.0}  # dropout masks are random either way
    if backbone == "dien":
        config["aux_weight"] = 0.0  # its negatives are sampled at random
    fast, _ = build_model(features, backbone, config, adaptor)
    with torch.no_grad():  # every parameter non-zero (the knowledge projections start at 0)
        for p in fast.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    reference = copy.deepcopy(fast)
    use_reference_ops(reference)
    assert all(getattr(m, "reference", True) for m in reference.modules())
    fast.train(), reference.train()
    batch = _batch(features)
    out, grads = _forward_backward(fast, batch)
    ref_out, ref_grads = _forward_backward(reference, batch)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_index_embedding_is_nn_embedding_with_padding_left_untouched():
    torch.manual_seed(0)
    fast = IndexEmbedding(10, 4, padding_idx=0)
    plain = nn.Embedding(10, 4, padding_idx=0)
    plain.load_state_dict(fast.state_dict())
    index = torch.tensor([[0, 3, 3, 9], [1, 0, 3, 2]])  # padding and repeats
    grad = torch.randn(2, 4, 4)
    fast(index).backward(grad)
    plain(index).backward(grad)
    assert isinstance(fast, nn.Embedding)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad)
    assert fast.weight.grad[0].abs().sum() == 0  # the padding row learns nothing
    assert fast.weight.grad[3].abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(fast(index), plain(index))


def test_epoch_batches_feed_every_row_once_in_the_permutation_order(small):
    train = small.tensors("train")
    n = len(train["label"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    plain, _ = build_model(small.without_knowledge(), "deepfm", SMALL)
    steps = list(epoch_batches(plain, train, order, 300))
    reference = list(epoch_batches(plain, train, order, 300, reference=True))
    assert len(steps) == len(reference) == -(-n // 300)
    seen = torch.cat([idx for idx, _ in steps])
    assert torch.equal(seen, order)  # each row exactly once, in the permutation's order
    assert torch.equal(torch.sort(seen).values, torch.arange(n))
    for (idx, batch), (ref_idx, ref_batch) in zip(steps, reference, strict=True):
        assert torch.equal(idx, ref_idx)
        assert not set(KNOWLEDGE_KEYS) & batch.keys()  # no adaptor: not gathered
        for key, value in batch.items():
            assert torch.equal(value, train[key][idx]) and torch.equal(value, ref_batch[key])
    joint, _ = build_model(small, "deepfm", SMALL, AdaptorConfig.load("mlp"))
    _, batch = next(iter(epoch_batches(joint, train, order, 300)))
    assert batch.keys() == train.keys()  # the adaptor reads the knowledge indices


@pytest.mark.parametrize("backbone", ["deepfm", "din"])
def test_batched_prediction_equals_one_pass(small, backbone):
    model, _ = build_model(small, backbone, SMALL, AdaptorConfig.load("hea"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    valid = small.tensors("valid")
    whole = predict(model, valid, batch_size=len(valid["label"]))
    for size in (1, 7, 64):
        np.testing.assert_allclose(predict(model, valid, batch_size=size), whole, rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
    with torch.no_grad():
        direct = torch.sigmoid(model(valid)).numpy()
    np.testing.assert_allclose(whole, direct, rtol=1e-6, atol=1e-7)
    assert not model.training


def test_fused_adam_takes_the_reference_steps(small):
    model, config = build_model(small.without_knowledge(), "deepfm", SMALL)
    reference = copy.deepcopy(model)
    fast_opt = make_optimiser(model, config)
    ref_opt = make_optimiser(reference, config, reference=True)
    batch = _batch(small.without_knowledge())
    loss = nn.BCEWithLogitsLoss()
    for _ in range(3):
        for net, opt in ((model, fast_opt), (reference, ref_opt)):
            opt.zero_grad()
            net.eval()  # no dropout: the same function
            loss(net(batch), batch["label"]).backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backbone", ["deepfm", "din"])
def test_training_reaches_the_reference_model(small, backbone):
    """Same seed, same rows per step: the fast path trains the model the reference path
    trains (up to float rounding). Without dropout: the fast path's dropout masks come from
    other random numbers (test_relu_dropout_is_dropout_with_a_cheaper_mask)."""
    features = small.without_knowledge()
    config = {**SMALL, "dropout": 0.0}
    fast = train_ctr(features, backbone, config, seed=2)
    reference = train_ctr(features, backbone, config, seed=2, reference=True)
    assert fast.best_epoch == reference.best_epoch and fast.epochs_run == reference.epochs_run
    assert abs(fast.valid_auc - reference.valid_auc) < 1e-4
    assert abs(fast.test_auc - reference.test_auc) < 1e-4
    for row, ref_row in zip(fast.history, reference.history, strict=True):
        assert row.get("train_loss", 0.0) == pytest.approx(ref_row.get("train_loss", 0.0), abs=1e-4)


def test_relu_dropout_is_dropout_with_a_cheaper_mask():
    """The fast path's ReLU -> Dropout is dropout(relu(x)) for its own mask: the outputs and
    gradients of relu(x) * mask / P(keep); the mask drops at the rate asked (to 2^-17), is
    reproducible from torch's seed, and eval mode (or p = 0) drops nothing."""
    x = torch.randn(64, 48, requires_grad=True)
    grad = torch.randn(64, 48)
    torch.manual_seed(5)
    out = relu_dropout(x, 0.3)
    out.backward(grad)
    torch.manual_seed(5)
    keep, scale = keep_mask(x.shape, 0.3)
    assert scale == pytest.approx(1 / 0.7, rel=1e-4)
    y = x.detach().clone().requires_grad_()
    expected = torch.relu(y) * keep * scale
    expected.backward(grad)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, y.grad)
    big, _ = keep_mask(torch.Size([1000, 1000]), 0.1)
    assert abs(1 - big.float().mean().item() - 0.1) < 2e-3  # ~6 std of a 10^6 draw
    assert dropout_threshold(0.1) == round(0.1 * 65536) - 32768
    torch.manual_seed(9)
    again, _ = keep_mask(torch.Size([1000, 1000]), 0.1)
    torch.manual_seed(9)
    assert torch.equal(again, keep_mask(torch.Size([1000, 1000]), 0.1)[0])
    assert torch.equal(relu_dropout(x, 0.0), torch.relu(x))
    net = mlp(48, [32, 16], 1, dropout=0.5)
    plain = nn.Sequential(*net)  # the modules nn.Sequential would hold: same state dict
    assert list(net.state_dict()) == list(plain.state_dict())
    net.eval()
    torch.testing.assert_close(net(x), plain.eval()(x))  # eval: no dropout either way
    net.train()
    torch.manual_seed(1)
    first = net(x)
    torch.manual_seed(1)
    assert torch.equal(first, net(x))  # the seed fixes the masks
    assert not torch.equal(first, net(x))
