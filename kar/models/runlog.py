"""The evaluation's run log: one JSON line per finished run (:data:`RESULT_SCHEMA`), so an
interrupted evaluation resumes where it stopped, and the no-knowledge models kept beside
it for the warm starts.

Also the row a finished run becomes (:func:`result_row`, with the cold-start slices of
:func:`cold_slices`) and the names every evaluation module shares (arms, baseline)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from kar.models.metrics import auc
from kar.project import WARM_START_DIR

if TYPE_CHECKING:
    import torch

    from kar.models.inputs import CTRFeatures
    from kar.models.train import TrainResult

BASELINE = "baseline_lr"
ARMS = ("none", "knowledge", "shuffled")
RESULT_SCHEMA = {
    "backbone": pl.Utf8,
    "arm": pl.Utf8,  # none | knowledge | shuffled
    "seed": pl.Int64,
    "test_auc": pl.Float64,
    "test_logloss": pl.Float64,
    "valid_auc": pl.Float64,
    "best_epoch": pl.Int64,
    "seconds_per_epoch": pl.Float64,
    "config": pl.Utf8,  # the grid point chosen on validation (JSON; "{}" when not tuned)
    "cold_item_auc": pl.Float64,  # test rows whose item had < cold_threshold fit interactions
    "cold_user_auc": pl.Float64,
    "n_cold_item": pl.Int64,
    "n_cold_user": pl.Int64,
    "gate_open": pl.Boolean,  # knowledge arms: the knowledge model kept (None: no gate)
    # knowledge arms: the same run's model at its best trained epoch, before the gate's
    # fallback (None: the none arm, or a run logged before kar recorded it)
    "ungated_test_auc": pl.Float64,
    "ungated_test_logloss": pl.Float64,
    "ungated_valid_auc": pl.Float64,
}
# the summary's rows of the knowledge arms without the gate (from the same runs)
UNGATED = {"knowledge": "knowledge (ungated)", "shuffled": "shuffled (ungated)"}
SUMMARY_ARMS = (*ARMS, *UNGATED.values())


class RunLog:
    """Finished runs of :func:`kar.models.harness.compare`, one JSON line each in ``path``,
    so an interrupted evaluation resumes where it stopped (and several processes may share
    the work, each taking some backbones). A run counts only when its line carries its arm's
    fingerprint: ``fingerprints[arm]`` (the features that arm trains on and its
    configuration); a line cut short by a kill is ignored."""

    def __init__(self, path: Path | None, fingerprints: Mapping[str, str]) -> None:
        self.path = path
        self.fingerprints = dict(fingerprints)
        self.rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._read_size = -1

    def _refresh(self) -> None:
        """Re-read the file when it grew (another process logged runs)."""
        if self.path is None or not self.path.exists():
            return
        size = self.path.stat().st_size
        if size == self._read_size:
            return
        self._read_size = size
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or row.get("arm") not in self.fingerprints:
                continue
            if row.get("fingerprint") == self.fingerprints[row["arm"]]:
                self.rows[(row["backbone"], row["arm"], int(row["seed"]))] = row

    def get(self, backbone: str, arm: str, seed: int) -> dict[str, Any] | None:
        self._refresh()
        row = self.rows.get((backbone, arm, seed))
        return None if row is None else {k: row.get(k) for k in RESULT_SCHEMA}

    def config_of(self, backbone: str, arm: str) -> dict[str, Any] | None:
        """The configuration a logged run of (backbone, arm) used, any seed (every seed runs
        the one chosen on validation); None when none is logged."""
        self._refresh()
        for (b, a, _seed), row in sorted(self.rows.items()):
            if (b, a) == (backbone, arm) and isinstance(row.get("config"), str):
                return json.loads(row["config"])
        return None

    def add(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**row, "fingerprint": self.fingerprints[row["arm"]]}) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:  # one short append: atomic
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def state_path(self, backbone: str, seed: int) -> Path | None:
        """Where the no-knowledge model of (backbone, seed) is kept for warm starts."""
        if self.path is None:
            return None
        name = f"{self.fingerprints['none']}-{backbone}-seed{seed}.pt"
        return self.path.parent / WARM_START_DIR / name


def save_state(path: Path | None, state: Mapping[str, torch.Tensor]) -> None:
    """Keep a model's state at ``path`` (written whole, then renamed); nothing without one."""
    if path is None:
        return
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(dict(state), tmp)
    tmp.replace(path)


def load_state(path: Path | None) -> Mapping[str, torch.Tensor] | None:
    """The state kept at ``path``; None when there is none or it cannot be read."""
    if path is None or not path.exists():
        return None
    import torch

    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a file cut short by a kill: train the model again
        return None


def config_text(point: Mapping[str, Any]) -> str:
    """A grid point as the run log's ``config`` column (sorted JSON)."""
    return json.dumps(dict(point), sort_keys=True)


def cold_slices(features: CTRFeatures, probs: np.ndarray, threshold: int) -> dict[str, float | int]:
    """AUC on the test rows whose item (user) had fewer than ``threshold`` interactions in
    history + train, and how many rows each slice holds."""
    labels = features.samples["test"]["label"].to_numpy()
    out: dict[str, float | int] = {}
    for kind in ("item", "user"):
        cold = features.fit_counts["test"][kind] < threshold
        out[f"cold_{kind}_auc"] = auc(labels[cold], probs[cold]) if cold.any() else math.nan
        out[f"n_cold_{kind}"] = int(cold.sum())
    return out


def result_row(
    features: CTRFeatures,
    arm: str,
    result: TrainResult,
    point: Mapping[str, Any],
    cold_threshold: int,
) -> dict[str, Any]:
    """One row of :data:`RESULT_SCHEMA` for a finished run (its test split evaluated)."""
    from kar.models.train import predict

    probs = predict(result.model, features.tensors("test"))
    knowledge = arm != "none"
    return {
        "backbone": result.backbone,
        "arm": arm,
        "seed": result.seed,
        "test_auc": result.test_auc,
        "test_logloss": result.test_logloss,
        "valid_auc": result.valid_auc,
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": result.seconds_per_epoch,
        "config": config_text(point),
        **cold_slices(features, probs, cold_threshold),
        "gate_open": result.gate_open,
        "ungated_test_auc": result.ungated_test_auc if knowledge else None,
        "ungated_test_logloss": result.ungated_test_logloss if knowledge else None,
        "ungated_valid_auc": result.ungated_valid_auc if knowledge else None,
    }
