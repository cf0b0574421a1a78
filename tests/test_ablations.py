"""Ablation harness and discrete knowledge codes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from kar.adaptor import AdaptorConfig
from kar.adaptor.codes import KnowledgeCodebook, knowledge_codes, with_codes
from kar.errors import ConfigError, DataValidationError
from kar.models.ablations import (
    ablate,
    ablation_markdown,
    ablation_table,
    default_variants,
    restrict_knowledge,
)
from kar.models.inputs import CTRFeatures
from kar.models.toydata import simple_time_split, synthetic_dataset, synthetic_knowledge
from kar.models.train import train_ctr

SMALL = {"max_epochs": 4, "batch_size": 256, "embedding_dim": 8, "mlp_hidden": [32], "lr": 3e-3}


@pytest.fixture(scope="module")
def data():
    # many items, few rows each: the item counters barely know the hidden bit, knowledge does
    ds, truth = synthetic_dataset(n_users=100, n_items=1500, n_rows=3000)
    users, items = synthetic_knowledge(ds, truth, dim=8, informative=True)
    split = simple_time_split(ds.interactions)
    f = CTRFeatures.build(ds, split, history_len=10, knowledge_users=users, knowledge_items=items)
    return f, truth, users, items


def test_codebook_recovers_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[10, 0], [0, 10], [-10, -10]], dtype=np.float32)
    truth = rng.integers(0, 3, 300)
    x = centres[truth] + rng.normal(0, 0.5, (300, 2)).astype(np.float32)
    frame = pl.DataFrame({"entity_id": [f"e{j}" for j in range(300)], "vector": list(x)})
    codes = KnowledgeCodebook.fit(frame, size=3).assign(frame)["code"].to_numpy()
    assert set(codes) == {1, 2, 3}  # 0 is reserved for "no knowledge"
    # same cluster <=> same code
    assert all(len(set(codes[truth == t])) == 1 for t in range(3))
    with pytest.raises(ConfigError, match="codebook size"):
        KnowledgeCodebook.fit(frame, size=0)
    with pytest.raises(DataValidationError, match="have 3 values, the codebook 2"):
        KnowledgeCodebook(np.zeros((2, 2), np.float32)).assign(
            pl.DataFrame({"entity_id": ["a"], "vector": [[1.0, 2.0, 3.0]]})
        )


def test_codes_become_a_categorical_feature(data):
    f, truth, users, items = data
    u_codes, i_codes = knowledge_codes(users, items, size=4)
    coded = with_codes(f, u_codes, i_codes, 4)
    assert coded.item_attr_sizes[-1] == 5 and coded.item_attr_names[-1] == "knowledge_code"
    train = coded.arrays["train"]["item_attrs"]
    assert train.shape[1] == f.arrays["train"]["item_attrs"].shape[1] + 1
    expected = (
        f.samples["train"]
        .join(
            i_codes.rename({"entity_id": "item_id"}),
            on="item_id",
            how="left",
            maintain_order="left",
        )["code"]
        .fill_null(0)
    )
    np.testing.assert_array_equal(train[:, -1], expected.to_numpy())
    # item vectors dominated by the hidden bit -> a 2-code book recovers it, and the code
    # alone (no vectors) lets the model separate good from bad items
    good = truth["good"].to_numpy().astype(np.float32)
    rng = np.random.default_rng(1)
    vectors = np.c_[5 * good, rng.normal(0, 0.1, (len(good), 3))].astype(np.float32)
    bit_items = pl.DataFrame({"entity_id": truth["item_id"], "vector": list(vectors)})
    u_codes, i_codes = knowledge_codes(users, bit_items, size=2)
    bit = with_codes(f, u_codes, i_codes, 2).without_knowledge()
    config = {**SMALL, "max_epochs": 5}
    r = train_ctr(bit, "deepfm", config, seed=0)
    plain = train_ctr(f.without_knowledge(), "deepfm", config, seed=0)
    assert r.test_auc > plain.test_auc + 0.03


def test_restrict_knowledge(data):
    f = data[0]
    only_user = restrict_knowledge(f, "user")
    assert only_user.item_missing.all() and not only_user.item_knowledge.any()
    np.testing.assert_array_equal(only_user.user_knowledge, f.user_knowledge)
    assert restrict_knowledge(f, "both") is f
    with pytest.raises(ConfigError, match="user, item or both"):
        restrict_knowledge(f, "items")


def test_ablate_rows_and_table(data):
    f = data[0]
    variants = default_variants(("adaptor", "kinds", "codes"), codebook_size=4)
    rows = ablate(f, "deepfm", variants, seeds=(0,), model_config=SMALL)
    table = ablation_table(rows)
    by = {(r["group"], r["variant"]): r for r in table.iter_rows(named=True)}
    assert {
        ("adaptor", "raw"),
        ("kinds", "item facts only"),
        ("codes", "vectors + codes (k=4)"),
    } <= set(by)
    assert by[("reference", "no knowledge")]["rel_auc_gain"] == pytest.approx(0.0, abs=1e-12)
    # 'both' is the reference adaptor: the same run, the same number
    assert by[("kinds", "both")]["auc_mean"] == by[("adaptor", "hea")]["auc_mean"]
    # the informative knowledge is in the item vectors: user-only loses it
    assert (
        by[("kinds", "item facts only")]["auc_mean"]
        > by[("kinds", "user reasoning only")]["auc_mean"]
    )
    assert "| codes | vectors + codes (k=4) |" in ablation_markdown(table)
    with pytest.raises(ConfigError, match="unknown ablation group"):
        default_variants(("adaptors",))


def test_raw_adaptor_has_no_parameters(data):
    f = data[0]
    r = train_ctr(f, "din", SMALL, AdaptorConfig.load("raw"), seed=0)
    assert r.adaptor is not None and r.adaptor.out_dim == f.knowledge_dim
    assert sum(p.numel() for p in r.adaptor.parameters()) == 0


def test_codes_variant_with_cold_start_entities():
    """Items with knowledge but never in training (cold start) must not break the codes row:
    adapted vectors are taken over the knowledge index, not the id-embedding vocabulary."""
    ds, truth = synthetic_dataset(n_users=60, n_items=200, n_rows=1200)
    users, items = synthetic_knowledge(ds, truth, dim=8, informative=True)
    split = simple_time_split(ds.interactions)
    f = CTRFeatures.build(ds, split, history_len=5, knowledge_users=users, knowledge_items=items)
    assert f.knowledge_items.height > f.n_items  # some items only have knowledge
    variants = default_variants(("codes",), codebook_size=4)
    rows = ablate(f, "deepfm", variants, seeds=(0,), model_config=SMALL)
    assert "vectors + codes (k=4)" in rows["variant"].to_list()
