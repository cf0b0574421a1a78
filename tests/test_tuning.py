"""Tuning on validation only: the grid point is chosen by validation AUC, never by test."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
import torch

from kar.models.harness import compare
from kar.models.inputs import CTRFeatures
from kar.models.report import write_report
from kar.models.train import train_ctr
from kar.models.tuning import KNOWLEDGE_GRID, TUNING_GRID, choose_config
from kar.project import ProjectSettings

# Two learning rates far apart, so the validation AUCs differ clearly on this data.
GRID = ({"lr": 1e-4}, {"lr": 1e-2})
CONFIG = {"max_epochs": 2, "batch_size": 256, "embedding_dim": 8}


@pytest.fixture(scope="module")
def features(synthetic_features) -> CTRFeatures:
    return synthetic_features


def _relabel(features: CTRFeatures, split: str, fn) -> CTRFeatures:
    """The same features with ``fn`` applied to one split's labels (what the models read)."""
    labels = fn(features.arrays[split]["label"]).astype(np.float32)
    arrays = {**features.arrays, split: {**features.arrays[split], "label": labels}}
    return dataclasses.replace(features, arrays=arrays)


def test_choice_depends_on_validation_labels_only(features) -> None:
    plain = features.without_knowledge()
    point, chosen, trials = choose_config(plain, "deepfm", GRID, CONFIG)
    assert [t["config"] for t in trials] == list(GRID)
    assert point == max(trials, key=lambda t: t["valid_auc"])["config"] == {"lr": 1e-2}
    assert chosen.valid_auc == max(t["valid_auc"] for t in trials)
    assert not np.isnan(chosen.test_auc)  # the chosen run alone is evaluated on test

    rng = np.random.default_rng(0)
    shuffled = _relabel(plain, "test", rng.permutation)
    point_t, chosen_t, trials_t = choose_config(shuffled, "deepfm", GRID, CONFIG)
    assert point_t == point
    assert [t["valid_auc"] for t in trials_t] == [t["valid_auc"] for t in trials]
    assert chosen_t.test_auc != chosen.test_auc  # the test labels did change

    flipped = _relabel(plain, "valid", lambda y: 1 - y)
    point_v, _, trials_v = choose_config(flipped, "deepfm", GRID, CONFIG)
    assert [t["valid_auc"] for t in trials_v] != [t["valid_auc"] for t in trials]
    assert point_v == max(trials_v, key=lambda t: t["valid_auc"])["config"]  # validation decides


def test_trials_leave_the_test_split_unread(features) -> None:
    plain = features.without_knowledge()
    result = train_ctr(plain, "deepfm", CONFIG, evaluate_test=False)
    assert np.isnan(result.test_auc) and np.isnan(result.test_logloss)
    assert not np.isnan(result.valid_auc)


def test_compare_runs_every_seed_with_the_chosen_config(features, tmp_path) -> None:
    results = compare(
        features,
        ("deepfm",),
        seeds=(0, 1),
        model_config=CONFIG,
        progress=False,
        tune=True,
        grid=GRID,
    )
    assert results.height == 2 + 3 * 2  # as without tuning: only the chosen config reported
    rows = results.filter(pl.col("backbone") == "deepfm")
    # one configuration, chosen without knowledge, runs in every arm; each knowledge arm
    # adds the knowledge learning rate it chose on its own validation AUC
    none_config = json.loads(rows.filter(pl.col("arm") == "none")["config"][0])
    assert none_config in GRID
    for arm in ("none", "knowledge", "shuffled"):
        configs = rows.filter(pl.col("arm") == arm)["config"]
        assert configs.n_unique() == 1
        extra = {k: v for k, v in json.loads(configs[0]).items() if k not in none_config}
        assert extra == {} if arm == "none" else extra in KNOWLEDGE_GRID
    assert set(results.filter(pl.col("backbone") == "baseline_lr")["config"]) == {"{}"}

    # seed 0 is the tuning run of the chosen point; seed 1 reruns that point
    plain = features.without_knowledge()
    point, first, _ = choose_config(plain, "deepfm", GRID, CONFIG, seed=0)
    second = train_ctr(plain, "deepfm", {**CONFIG, **point}, seed=1)
    without = rows.filter(pl.col("arm") == "none").sort("seed")
    assert json.loads(without["config"][0]) == point
    assert without["test_auc"].to_list() == pytest.approx([first.test_auc, second.test_auc])

    md, _ = write_report(results, tmp_path, "tuned", "kar evaluate")
    text = md.read_text()
    assert "Configuration chosen per backbone on validation AUC" in text
    assert f"| deepfm | none | `{without['config'][0]}` |" in text

    untuned = compare(features, ("deepfm",), seeds=(0,), model_config=CONFIG, progress=False)
    assert set(untuned["config"]) == {"{}"}
    assert (
        "Configurations chosen"
        not in write_report(untuned, tmp_path / "u", "t", "c")[0].read_text()
    )


def test_tuning_is_a_project_setting_with_a_small_shared_grid() -> None:
    assert ProjectSettings().training.tune is True  # on by default (issue 31)
    assert not ProjectSettings.model_validate({"training": {"tune": False}}).training.tune
    assert 1 < len(TUNING_GRID) <= 4
    from kar.models.config import ModelConfig

    for point in TUNING_GRID:  # fields every backbone shares
        assert set(point) <= set(ModelConfig.model_fields)


def test_model_config_in_kar_yaml_reaches_each_backbone(features) -> None:
    from kar.errors import ConfigError

    training = ProjectSettings.model_validate(
        {
            "training": {
                "model_config": {
                    "default": {"embedding_dim": 4, "max_epochs": 1},
                    "din": {"embedding_dim": 6},
                }
            }
        }  # fmt: skip
    ).training
    assert training.backbone_config("deepfm") == {"embedding_dim": 4, "max_epochs": 1}
    assert training.backbone_config("din") == {"embedding_dim": 6, "max_epochs": 1}
    # the key kar.yaml uses is written back as it was read
    dumped = ProjectSettings(training=training).model_dump(mode="json", by_alias=True)
    assert dumped["training"]["model_config"]["din"] == {"embedding_dim": 6}
    plain = features.without_knowledge()
    for backbone, dim in (("deepfm", 4), ("din", 6)):
        result = train_ctr(plain, backbone, training.backbone_config(backbone))
        assert result.model.backbone.inputs.user.embedding_dim == dim
    bad = ProjectSettings.model_validate(
        {"training": {"model_config": {"din": {"embeding_dim": 6}}}}
    ).training
    with pytest.raises(ConfigError, match="(?s)invalid din config.*embeding_dim"):
        train_ctr(plain, "din", bad.backbone_config("din"))


def test_a_knowledge_grid_point_sets_start_lr_scale_and_standardisation(features) -> None:
    from kar.adaptor.config import AdaptorConfig
    from kar.models.tuning import ADAPTOR_KEYS, adaptor_of, start_and_config, train_at_point

    assert any(p.get("standardize") for p in KNOWLEDGE_GRID)  # chosen per arm, not fixed
    assert any(not p.get("standardize") for p in KNOWLEDGE_GRID)
    point = {"lr": 1e-2, "start": "fresh", "knowledge_lr_scale": 5.0, "standardize": True}
    config, warm = start_and_config(point, warm_start=True)
    assert config == {"lr": 1e-2, "knowledge_lr_scale": 5.0} and warm is False
    assert not set(ADAPTOR_KEYS) & set(config)
    base = AdaptorConfig()
    assert adaptor_of(point, base).standardize and not base.standardize
    assert adaptor_of({"lr": 1e-2}, base) is base

    result = train_at_point(features, "deepfm", CONFIG, point, base, None, seed=0, warm_start=True)
    assert result.adaptor_config.standardize and result.model_config.knowledge_lr_scale == 5.0
    # the z-scoring statistics were fitted on the raw encodings (not left at 0 / 1)
    mean = result.adaptor.input_mean
    assert torch.count_nonzero(mean) > 0
    plain = train_at_point(
        features, "deepfm", CONFIG, {"lr": 1e-2}, base, None, seed=0, warm_start=True
    )
    assert torch.count_nonzero(plain.adaptor.input_mean) == 0
