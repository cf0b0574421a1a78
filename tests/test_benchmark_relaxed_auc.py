"""The helpers of benchmarks/relaxed_auc.py: shard parsing, the paired AUC column and the
run log shared between its projects (the script itself is run by hand: it takes hours)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from kar.models.runlog import RunLog

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "relaxed_auc.py"


@pytest.fixture(scope="module")
def relaxed_auc():
    spec = importlib.util.spec_from_file_location("relaxed_auc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project_at(path: Path) -> SimpleNamespace:
    """What the helpers read of a project: its reports folder."""
    return SimpleNamespace(reports_dir=path / "reports")


def test_shard_is_parsed_and_bad_values_are_named(relaxed_auc):
    assert relaxed_auc.parse_shard("1/3") == (1, 3)
    for bad, message in [("2/2", "need 0 <= I < N"), ("-1/2", "need 0 <= I < N"),
                         ("1", "expected I/N"), ("a/b", "expected I/N")]:  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=message) as caught:
            relaxed_auc.parse_shard(bad)
        assert repr(bad) in str(caught.value)


def test_paired_column_pairs_seeds_of_the_same_backbone(relaxed_auc, tmp_path):
    plain, relaxed = project_at(tmp_path / "plain"), project_at(tmp_path / "relaxed")
    diffs = {"deepfm": [-0.002, 0.001, -0.005], "din": [0.0004]}
    for project, sign in [(plain, 0), (relaxed, 1)]:
        rows = [
            {"backbone": backbone, "arm": arm, "seed": seed,
             # runs without knowledge differ a lot: they must not enter the column
             "test_auc": 0.7 + sign * d if arm == "knowledge" else 0.6 + sign * 0.05}
            for backbone, ds in diffs.items()
            for seed, d in enumerate(ds)
            for arm in ("none", "knowledge")
        ]  # fmt: skip
        project.reports_dir.mkdir(parents=True)
        pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=sign).write_csv(
            project.reports_dir / "results.csv"
        )
    column = relaxed_auc.paired_differences(plain, relaxed)
    # deepfm: mean -0.002, sd 0.003, se 0.003 / sqrt(3)
    assert column["deepfm"] == "-0.0020 ± 0.0030 (-0.0050, +0.0010), se 0.0017, 3 seeds"
    assert column["din"] == "+0.0004 ± 0.0000 (+0.0004, +0.0004), se 0.0000, 1 seeds"


def test_runs_without_knowledge_are_shared_once(relaxed_auc, tmp_path):
    plain, relaxed = project_at(tmp_path / "plain"), project_at(tmp_path / "relaxed")
    assert relaxed_auc.share_runs_without_knowledge(plain, relaxed) == 0  # nothing logged yet
    fingerprints = {"none": "data", "knowledge": "data+vectors-a", "shuffled": "data+s"}
    log = RunLog(plain.reports_dir / "evaluate_runs.jsonl", fingerprints)
    base = {"test_logloss": 0.6, "valid_auc": 0.7, "best_epoch": 1,
            "seconds_per_epoch": 1.0, "config": "{}"}  # fmt: skip
    for seed in (0, 1):
        for arm in ("none", "knowledge"):
            log.add({**base, "backbone": "deepfm", "arm": arm, "seed": seed,
                     "test_auc": 0.70 + seed / 100 + (arm == "knowledge") / 10})  # fmt: skip
    with log.path.open("a") as fh:
        fh.write('{"backbone": "deepfm", "ar')  # a line cut short by a kill

    assert relaxed_auc.share_runs_without_knowledge(plain, relaxed) == 2
    assert relaxed_auc.share_runs_without_knowledge(plain, relaxed) == 0  # not twice
    shared = relaxed.reports_dir / "evaluate_runs.jsonl"
    assert [json.loads(line)["arm"] for line in shared.read_text().splitlines()] == [
        "none",
        "none",
    ]
    # the relaxed project's own vectors: its runs without knowledge come from the log
    other = RunLog(shared, {"none": "data", "knowledge": "data+vectors-b", "shuffled": "s"})
    assert other.get("deepfm", "none", 1)["test_auc"] == pytest.approx(0.71)
    assert other.get("deepfm", "knowledge", 0) is None
