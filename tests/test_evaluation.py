"""Evaluation harness: leakage-free baseline, compare / summarize / report."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from kar.data.schema import INTERACTION_SCHEMA
from kar.models.baseline import fit_rate_baseline
from kar.models.counters import rates_before
from kar.models.harness import compare
from kar.models.inputs import CTRFeatures
from kar.models.metrics import auc
from kar.models.report import headline_line, summarize, write_report
from kar.models.runlog import cold_slices


def events(rows: list[tuple[str, str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [datetime.fromtimestamp(r[2], UTC) for r in rows],
            "rating": [None] * len(rows),
            "label": [r[3] for r in rows],
        },
        schema=INTERACTION_SCHEMA,
    )


def test_rates_use_only_strictly_earlier_rows():
    past = [("a", "x", 1, 1), ("b", "x", 2, 0), ("c", "x", 3, 1)]
    samples = events([("d", "x", 3, 1), ("e", "x", 5, 0), ("f", "y", 5, 1)])
    log = events(past + [("d", "x", 3, 1), ("e", "x", 5, 0), ("f", "y", 5, 1)])
    rates = rates_before(log, samples, "item_id", prior=0.5, strength=2.0)
    # d at t=3: rows at t=1, 2 only (c is the same second) -> (1 + 1) / (2 + 2)
    # e at t=5: rows at t=1..3 incl. d -> (3 + 1) / (4 + 2); f: new item -> the prior
    np.testing.assert_allclose(rates, [2 / 4, 4 / 6, 0.5])
    # flipping every label from t=3 on changes nothing for the sample at t=3
    future = log.with_columns(
        pl.when(pl.col("timestamp") >= datetime.fromtimestamp(3, UTC))
        .then(1 - pl.col("label"))
        .otherwise(pl.col("label"))
        .alias("label")
    )
    assert rates_before(future, samples, "item_id", 0.5, 2.0)[0] == rates[0]


@pytest.fixture(scope="module")
def features(synthetic_features) -> CTRFeatures:
    return synthetic_features


def test_baseline_is_leakage_free(features):
    result = fit_rate_baseline(features)
    assert 0.5 < result.test_auc < 1.0
    # flip every test label: train and valid come before test in time, so the fitted model
    # and the validation metrics must not move
    test = features.samples["test"]
    flipped_test = test.with_columns((1 - pl.col("label")).cast(pl.Int8).alias("label"))
    flipped = CTRFeatures(**features.__dict__)
    flipped.samples = {**features.samples, "test": flipped_test}
    kept = features.events.join(test, on=test.columns, how="anti")
    flipped.events = pl.concat([kept, flipped_test]).sort("user_id", "timestamp")
    again = fit_rate_baseline(flipped)
    np.testing.assert_array_equal(again.model.coef_, result.model.coef_)
    assert again.valid_auc == result.valid_auc and again.valid_logloss == result.valid_logloss
    assert again.test_auc != result.test_auc


CONFIG = {"max_epochs": 2, "batch_size": 256, "embedding_dim": 8}


def test_compare_summarize_and_report(features, tmp_path):
    results = compare(features, backbones=("deepfm",), seeds=(0, 1), model_config=CONFIG,
                      progress=False)  # fmt: skip
    assert results.height == 2 + 3 * 2  # baseline per seed + (none, knowledge, shuffled)
    assert set(results["backbone"]) == {"baseline_lr", "deepfm"}
    deepfm = results.filter(pl.col("backbone") == "deepfm")
    assert sorted(deepfm["arm"].to_list()) == sorted(2 * ["none", "knowledge", "shuffled"])
    summary = summarize(results)
    assert summary["backbone"].to_list() == ["baseline_lr"] + 5 * ["deepfm"]
    assert summary["arm"].to_list() == [
        "none", "none", "knowledge", "shuffled", "knowledge (ungated)", "shuffled (ungated)"
    ]  # fmt: skip

    def auc_of(arm: str) -> pl.Series:
        return deepfm.filter(pl.col("arm") == arm)["test_auc"]

    row = summary.filter(pl.col("arm") == "knowledge").row(0, named=True)
    assert row["gain_vs_none"] == pytest.approx(
        auc_of("knowledge").mean() / auc_of("none").mean() - 1
    )
    assert row["gain_vs_shuffled"] == pytest.approx(
        auc_of("knowledge").mean() / auc_of("shuffled").mean() - 1
    )
    assert row["n_seeds"] == 2 and row["auc_std"] == pytest.approx(auc_of("knowledge").std())
    shuffled = summary.filter(pl.col("arm") == "shuffled").row(0, named=True)
    assert shuffled["gain_vs_shuffled"] is None and shuffled["lift_counts"] is None
    assert row["gate_open_seeds"] == deepfm.filter(pl.col("arm") == "knowledge")["gate_open"].sum()

    # the ungated rows: the same runs' best trained epoch, before the gate
    def ungated_of(arm: str) -> pl.Series:
        return deepfm.filter(pl.col("arm") == arm)["ungated_test_auc"]

    ungated = summary.filter(pl.col("arm") == "knowledge (ungated)").row(0, named=True)
    assert ungated["auc_mean"] == pytest.approx(ungated_of("knowledge").mean())
    assert ungated["n_seeds"] == 2 and ungated["gate_open_seeds"] == 0
    info = ungated_of("knowledge").mean() / ungated_of("shuffled").mean() - 1
    assert ungated["gain_vs_shuffled"] == pytest.approx(info)
    assert row["info_gain"] == pytest.approx(info)  # the info column of the knowledge row
    spread = max(ungated_of("knowledge").std(), ungated_of("shuffled").std())
    gap = ungated_of("knowledge").mean() - ungated_of("shuffled").mean()
    assert row["info_counts"] == (gap > spread)
    shuffled_ungated = summary.filter(pl.col("arm") == "shuffled (ungated)").row(0, named=True)
    assert shuffled_ungated["gain_vs_none"] == pytest.approx(
        ungated_of("shuffled").mean() / auc_of("none").mean() - 1
    )
    md, png = write_report(results, tmp_path / "report", "Synthetic lift", "kar eval --demo")
    text = md.read_text()
    assert "| backbone | arm | AUC mean ± std | LogLoss mean ± std | n seeds | vs none" in text
    assert "kar eval --demo" in text and "| deepfm | knowledge |" in text
    assert "| deepfm | shuffled |" in text and "baseline_lr" in text
    assert "| deepfm | knowledge (ungated) |" in text and "| deepfm | shuffled (ungated) |" in text
    assert "| info (ungated) |" in text and "best trained epoch" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "results.csv").is_file()
    line = headline_line(summary)
    assert line.startswith("backbones_above_baseline: ") and "/1 info_gain_mean: " in line
    assert f"ungated_info_gain_mean: {100 * info:.2f}%" in line


def test_cold_slices_count_history_and_train_interactions(features):
    probs = np.linspace(0, 1, features.samples["test"].height)
    fit = features.events.join(
        pl.concat([features.samples[s] for s in ("valid", "test")]),
        on=["user_id", "item_id", "timestamp"], how="anti",
    )  # fmt: skip
    seen = dict(fit.group_by("item_id").len().iter_rows())
    cold = np.array([seen.get(i, 0) < 10 for i in features.samples["test"]["item_id"]])
    out = cold_slices(features, probs, threshold=10)
    assert out["n_cold_item"] == cold.sum() > 0
    labels = features.samples["test"]["label"].to_numpy()
    assert out["cold_item_auc"] == pytest.approx(auc(labels[cold], probs[cold]))
    assert cold_slices(features, probs, threshold=10**9)["n_cold_user"] == len(probs)


def test_finished_runs_are_logged_and_skipped_on_a_rerun(features, tmp_path, monkeypatch):
    runs = tmp_path / "runs.jsonl"
    config = {**CONFIG, "max_epochs": 1}
    first = compare(features, ("deepfm",), (0,), model_config=config, progress=False,
                    runs_file=runs, fingerprint="vectors-a")  # fmt: skip
    assert len(runs.read_text().splitlines()) == 3  # none, knowledge, shuffled
    assert len(list((tmp_path / "warm_start").glob("*.pt"))) == 1  # the none model, kept
    with runs.open("a") as fh:
        fh.write('{"backbone": "deepfm", "ar')  # a line cut short by a kill

    import kar.models.train as train

    def must_not_train(*args, **kwargs):
        raise AssertionError("a logged run was trained again")

    monkeypatch.setattr(train, "train_ctr", must_not_train)
    again = compare(features, ("deepfm",), (0,), model_config=config, progress=False,
                    runs_file=runs, fingerprint="vectors-a")  # fmt: skip
    # the logged runs come back as they were (the baseline is refitted: its time differs)
    assert again.drop("seconds_per_epoch").equals(first.drop("seconds_per_epoch"))
    deepfm = pl.col("backbone") == "deepfm"
    assert again.filter(deepfm).equals(first.filter(deepfm))
    # other vectors (another fingerprint) or another configuration are not reused
    with pytest.raises(AssertionError, match="trained again"):
        compare(features, ("deepfm",), (0,), model_config=config, progress=False,
                runs_file=runs, fingerprint="vectors-b")  # fmt: skip
    with pytest.raises(AssertionError, match="trained again"):
        compare(features, ("deepfm",), (0,), model_config={**config, "embedding_dim": 4},
                progress=False, runs_file=runs, fingerprint="vectors-a")  # fmt: skip


def test_new_knowledge_vectors_retrain_only_the_runs_with_knowledge(
    features, tmp_path, monkeypatch
):
    runs = tmp_path / "runs.jsonl"
    common = {"model_config": {**CONFIG, "max_epochs": 1}, "progress": False, "runs_file": runs}
    first = compare(features, ("deepfm",), (0, 1), **common, fingerprint="data",
                    knowledge_fingerprint="vectors-a")  # fmt: skip

    import kar.models.train as train

    real_train, trained = train.train_ctr, []

    def train_with_knowledge_only(feats, backbone, model_config, adaptor, **kwargs):
        if adaptor is None:
            raise AssertionError("a run without knowledge was trained again")
        assert kwargs["init_state"] is not None  # warm-started from the kept none model
        trained.append(kwargs["seed"])
        return real_train(feats, backbone, model_config, adaptor, **kwargs)

    monkeypatch.setattr(train, "train_ctr", train_with_knowledge_only)
    again = compare(features, ("deepfm",), (0, 1), **common, fingerprint="data",
                    knowledge_fingerprint="vectors-b")  # fmt: skip
    assert sorted(trained) == [0, 0, 1, 1]  # knowledge and shuffled, once per seed
    none = (pl.col("backbone") == "deepfm") & (pl.col("arm") == "none")
    assert again.filter(none).equals(first.filter(none))
    # other data (another fingerprint) retrains the runs without knowledge too
    with pytest.raises(AssertionError, match="without knowledge was trained again"):
        compare(features, ("deepfm",), (0,), **common, fingerprint="other-data",
                knowledge_fingerprint="vectors-b")  # fmt: skip


def test_useless_knowledge_costs_nothing_with_a_warm_start(features):
    """The shuffled control starts at the no-knowledge model and keeps it unless validation
    improves, so on test it stays close to no knowledge."""
    results = compare(features, ("deepfm",), (0,), model_config=CONFIG, progress=False,
                      arms=("none", "shuffled"))  # fmt: skip
    by_arm = {r["arm"]: r for r in results.filter(pl.col("backbone") == "deepfm").iter_rows(
        named=True)}  # fmt: skip
    assert set(by_arm) == {"none", "shuffled"}
    none, shuffled = by_arm["none"], by_arm["shuffled"]
    assert shuffled["valid_auc"] >= none["valid_auc"]  # epoch 0 is the none model itself
    if shuffled["best_epoch"] == 0:
        assert shuffled["test_auc"] == pytest.approx(none["test_auc"], abs=1e-6)


def test_ungated_rows_keep_the_control_visible_when_the_gate_closes(features):
    """A gate that must win every bootstrap resample closes on the shuffled control: the gated
    arm is then the model without knowledge (+0.00%), the ungated arm the trained model."""
    config = {**CONFIG, "knowledge_gate": 1.0}
    results = compare(features, ("deepfm",), (0, 1), model_config=config, progress=False,
                      arms=("none", "shuffled"))  # fmt: skip
    deepfm = results.filter(pl.col("backbone") == "deepfm")
    none = deepfm.filter(pl.col("arm") == "none").sort("seed")
    shuffled = deepfm.filter(pl.col("arm") == "shuffled").sort("seed")
    assert shuffled["gate_open"].to_list() == [False, False]
    np.testing.assert_allclose(shuffled["test_auc"], none["test_auc"], atol=1e-6)
    # the trained models predict otherwise (their AUC may tie on a small test split)
    assert (shuffled["ungated_test_logloss"] - shuffled["test_logloss"]).abs().min() > 1e-6
    summary = summarize(results)
    by_arm = {r["arm"]: r for r in summary.filter(pl.col("backbone") == "deepfm").iter_rows(
        named=True)}  # fmt: skip
    assert by_arm["shuffled"]["gain_vs_none"] == pytest.approx(0.0, abs=1e-6)
    ungated = by_arm["shuffled (ungated)"]
    assert ungated["auc_mean"] == pytest.approx(shuffled["ungated_test_auc"].mean())
    assert ungated["gain_vs_none"] != pytest.approx(0.0, abs=1e-6)
    assert ungated["auc_mean"] != pytest.approx(by_arm["shuffled"]["auc_mean"], abs=1e-6)
    assert ungated["logloss_mean"] != pytest.approx(by_arm["shuffled"]["logloss_mean"], abs=1e-6)


def test_runs_logged_without_ungated_metrics_are_marked_missing(features, tmp_path, monkeypatch):
    import json

    runs = tmp_path / "runs.jsonl"
    common = {"model_config": {**CONFIG, "max_epochs": 1}, "progress": False, "runs_file": runs}
    compare(features, ("deepfm",), (0,), **common, fingerprint="data")
    old = [json.loads(line) for line in runs.read_text().splitlines()]
    ungated = ("ungated_test_auc", "ungated_test_logloss", "ungated_valid_auc")
    assert all(row["ungated_test_auc"] is not None for row in old if row["arm"] != "none")
    # the log as an older kar wrote it: no ungated metrics
    runs.write_text("".join(json.dumps({k: v for k, v in row.items() if k not in ungated}) + "\n"
                            for row in old))  # fmt: skip
    import kar.models.train as train

    def must_not_train(*args, **kwargs):
        raise AssertionError("a logged run was trained again")

    monkeypatch.setattr(train, "train_ctr", must_not_train)
    again = compare(features, ("deepfm",), (0,), **common, fingerprint="data")
    assert again.filter(pl.col("arm") != "none")["ungated_test_auc"].null_count() == 2
    md, _ = write_report(again, tmp_path / "report", "Old log", "kar evaluate")
    text = md.read_text()
    assert "| deepfm | knowledge (ungated) | – (not logged) |" in text
    assert "| deepfm | knowledge | " in text
    # a results frame from before the ungated columns existed summarises as well
    older = again.drop(*ungated)
    assert summarize(older).filter(pl.col("arm") == "shuffled (ungated)")["auc_mean"][0] is None


def test_backbones_in_worker_processes_give_one_process_rows(features, tmp_path, monkeypatch):
    """``workers=2``: backbones and seeds train in spawned processes sharing the run log
    (the later seeds reading the first seed's choices back from it); the rows equal one
    process's, and this process trains nothing."""
    common = {"model_config": {**CONFIG, "max_epochs": 1}, "progress": False, "tune": True,
              "grid": [{"lr": 1e-2}], "arms": ("none", "knowledge")}  # fmt: skip
    alone = compare(features, ("deepfm", "dcnv2"), (0, 1), **common,
                    runs_file=tmp_path / "alone.jsonl")  # fmt: skip

    import kar.models.train as train

    def must_not_train_here(*args, **kwargs):
        raise AssertionError("the parent process trained a backbone")

    monkeypatch.setattr(train, "train_ctr", must_not_train_here)
    shared = tmp_path / "workers.jsonl"
    workers = compare(features, ("deepfm", "dcnv2"), (0, 1), **common, runs_file=shared,
                      workers=2)  # fmt: skip
    key = ["backbone", "arm", "seed"]
    timeless = [c for c in alone.columns if c != "seconds_per_epoch"]
    assert workers.select(timeless).sort(key).equals(alone.select(timeless).sort(key))
    logged = {json.loads(line)["backbone"] for line in shared.read_text().splitlines()}
    assert logged == {"deepfm", "dcnv2"}


def test_eval_workers_setting():
    from kar.project import TrainingSettings

    assert TrainingSettings(eval_workers=3).evaluation_workers() == 3
    assert TrainingSettings().evaluation_workers() >= 1  # auto: the usable cores
    with pytest.raises(ValueError, match="at least 1"):
        TrainingSettings(eval_workers=0)
