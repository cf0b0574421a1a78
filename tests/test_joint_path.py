"""KAR's joint path (kar.adaptor.module + examples/joint_deepctr.py): kar's adaptor inside a
DeepCTR-Torch DeepFM, trained on the model's own CTR loss, on small synthetic data whose
labels follow a hidden item bit that only the raw item encodings reveal."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from kar.adaptor import KnowledgeInput, build_module, load_module, vector_table
from kar.adaptor.trained import TrainedAdaptor
from kar.models.inputs import CTRFeatures
from kar.models.toydata import simple_time_split, synthetic_dataset, synthetic_knowledge

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "joint_deepctr.py"
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("joint_deepctr", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["joint_deepctr"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy() -> dict:
    """Ids + counters (CTRFeatures) and per-row raw encodings as a Feast frame returns them."""
    ds, truth = synthetic_dataset(n_users=80, n_items=300, n_rows=3000)
    users, items = synthetic_knowledge(ds, truth, dim=8)
    split = simple_time_split(ds.interactions)
    features = CTRFeatures.build(ds, split, history_len=5)
    rows = pl.concat([getattr(split, s).select("user_id", "item_id") for s in SPLITS])
    frame = rows.join(
        users.rename({"entity_id": "user_id", "vector": "user_raw"}), on="user_id", how="left",
        maintain_order="left",
    ).join(
        items.rename({"entity_id": "item_id", "vector": "item_raw"}), on="item_id", how="left",
        maintain_order="left",
    )  # fmt: skip
    user_rows, user_table = vector_table(frame["user_id"], frame["user_raw"])
    item_rows, item_table = vector_table(frame["item_id"], frame["item_raw"])
    sizes = np.cumsum([0] + [getattr(split, s).height for s in SPLITS])
    parts = {s: slice(sizes[i], sizes[i + 1]) for i, s in enumerate(SPLITS)}
    return {
        "features": features,
        "tables": (user_table, item_table),
        "rows": {s: (user_rows[p], item_rows[p]) for s, p in parts.items()},
    }


def _model(example, toy: dict, adaptor, knowledge_as: str = "dense") -> torch.nn.Module:
    torch.manual_seed(0)
    knowledge = KnowledgeInput(*toy["tables"], adaptor)
    f = toy["features"]
    return example.DeepFMConsumer(
        f.n_users + 1, f.n_items + 1, 4, knowledge, knowledge_as=knowledge_as, hidden=(32,)
    )


def _data(example, toy: dict) -> dict:
    return {s: example.batch_tensors(toy["features"], s, *toy["rows"][s]) for s in SPLITS}


def test_vector_table_keeps_one_row_per_entity_vector_and_flags_nulls() -> None:
    ids = pl.Series(["u1", "u2", "u1", "u3", "u2"])
    vectors = pl.Series([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], None, [5.0, 6.0]])
    rows, table = vector_table(ids, vectors)
    assert rows[3] == -1  # Feast gave no vector: no row
    assert rows[0] == rows[2] and len(set(rows[[0, 1, 4]])) == 3  # u2's two versions kept
    assert table.shape == (3, 2)
    np.testing.assert_array_equal(table[rows[4]], [5.0, 6.0])


def test_example_trains_the_adaptor_jointly_and_its_loss_falls(example, toy: dict) -> None:
    user_table, item_table = toy["tables"]
    adaptor = build_module("hea", user_table.shape[1], fit_on=(user_table, item_table))
    start = {k: v.clone() for k, v in adaptor.state_dict().items()}
    model = _model(example, toy, adaptor)
    data = _data(example, toy)

    batch = {k: v[:256] for k, v in data["train"].items()}
    prob = model(batch)
    torch.nn.functional.binary_cross_entropy(prob, batch["label"]).backward()
    grads = {n: p.grad for n, p in adaptor.named_parameters()}
    assert grads and all(g is not None for g in grads.values())
    assert all(float(g.abs().sum()) > 0 for g in grads.values()), grads.keys()
    model.zero_grad()

    result = example.fit(model, data["train"], data["valid"], lr=3e-3, batch_size=128,
                         max_epochs=4, patience=4)  # fmt: skip
    assert result.losses[-1] < result.losses[0]
    assert result.best_epoch >= 1 and result.valid_auc > 0.6  # the hidden bit is learned
    moved = [n for n, v in adaptor.state_dict().items() if not torch.equal(v, start[n])]
    assert any(n.startswith("shared") for n in moved)  # the adaptor itself was trained


def test_frozen_vectors_pass_through_and_missing_rows_are_zero(toy: dict) -> None:
    user_table, item_table = toy["tables"]
    knowledge = KnowledgeInput(user_table, item_table)  # no adaptor: the frozen path
    out = knowledge(torch.tensor([0, -1]), torch.tensor([1, 2]))
    assert out.shape == (2, knowledge.out_dim) == (2, 16)
    np.testing.assert_allclose(out[0, :8].numpy(), user_table[0])
    assert float(out[1, :8].abs().sum()) == 0.0  # no user vector: zeros
    np.testing.assert_allclose(out[1, 8:].numpy(), item_table[2])


def test_load_module_gives_the_trained_adaptor_trainable(tmp_path: Path, toy: dict) -> None:
    user_table, item_table = toy["tables"]
    adaptor = build_module("hea", user_table.shape[1])
    TrainedAdaptor(config=adaptor.config, module=adaptor).save(tmp_path / "adaptor")
    loaded = load_module(tmp_path / "adaptor")
    x = torch.from_numpy(user_table[:4])
    torch.testing.assert_close(loaded.encode("user", x), adaptor.encode("user", x))
    loaded.encode("item", torch.from_numpy(item_table[:4])).sum().backward()
    assert all(p.requires_grad for p in loaded.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in loaded.parameters())
    frozen = load_module(tmp_path / "adaptor", trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training


@pytest.mark.parametrize("knowledge_as", ["dense", "fields"])
def test_only_fields_mode_lets_the_fm_cross_knowledge(example, toy: dict, knowledge_as) -> None:
    """With the deep tower's output and the linear part's dense weights at zero, what is left
    is the FM: it reads the knowledge only when it enters as fields."""
    model = _model(example, toy, None, knowledge_as).eval()
    with torch.no_grad():
        model.deepfm.dnn_linear.weight.zero_()
        model.deepfm.linear_model.weight.zero_()
    batch = {k: v[:64] for k, v in _data(example, toy)["train"].items()}
    other = {**batch, "item_k": batch["item_k"].roll(1), "user_k": batch["user_k"].roll(3)}
    with torch.no_grad():
        moved = float((model(batch) - model(other)).abs().max())
    assert moved > 1e-6 if knowledge_as == "fields" else moved == 0.0


def test_fields_mode_trains_the_adaptor_jointly(example, toy: dict) -> None:
    user_table, item_table = toy["tables"]
    adaptor = build_module("hea", user_table.shape[1], fit_on=(user_table, item_table))
    start = {k: v.clone() for k, v in adaptor.state_dict().items()}
    model = _model(example, toy, adaptor, "fields")
    data = _data(example, toy)
    result = example.fit(model, data["train"], data["valid"], lr=3e-3, batch_size=128,
                         max_epochs=4, patience=4)  # fmt: skip
    assert result.losses[-1] < result.losses[0]
    assert result.best_epoch >= 1 and result.valid_auc > 0.6
    assert any(not torch.equal(v, start[n]) for n, v in adaptor.state_dict().items())


def test_unknown_knowledge_mode_is_refused(example, toy: dict) -> None:
    with pytest.raises(ValueError, match="knowledge_as"):
        _model(example, toy, None, "sideways")


def test_knowledge_lr_scale_reaches_the_adaptor_only(example, toy: dict) -> None:
    """At scale 0 the adaptor keeps its start while the consumer's own weights train."""
    user_table, item_table = toy["tables"]
    adaptor = build_module("hea", user_table.shape[1], fit_on=(user_table, item_table))
    model = _model(example, toy, adaptor, "fields")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = _data(example, toy)
    example.fit(model, data["train"], data["valid"], lr=3e-3, batch_size=256, max_epochs=1,
                patience=1, knowledge_lr_scale=0.0)  # fmt: skip
    trained = model.state_dict()
    moved = {k for k, v in trained.items() if not torch.equal(v, start[k])}
    assert not any(k.startswith("knowledge.") for k in moved)
    assert any(k.startswith("deepfm.") for k in moved)
    assert any(k.startswith("fields.") for k in moved)
