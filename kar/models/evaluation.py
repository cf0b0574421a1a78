"""Evaluation harness: every backbone without knowledge, with knowledge, and with the
shuffled-knowledge control, over seeds, beside the trivial baseline.

``compare`` -> one row per (backbone, arm, seed); ``summarize`` -> mean ± std per backbone
x arm, the relative AUC change over no knowledge and over the control, and the cold-start
slices; ``write_report`` -> markdown table + PNG.

The arms: ``none`` (no knowledge), ``knowledge`` (the project's vectors) and ``shuffled``
(the same vectors permuted across entities: the same distribution, no information),
trained exactly like ``knowledge``. A lift counts only above ``shuffled`` and above the
seed spread. With ``warm_start`` (the default) each knowledge arm starts from the same
seed's no-knowledge model, which is epoch 0 of its selection on validation; and every
knowledge model passes a gate that can close: it is kept only if it beats that
no-knowledge model on validation with probability ``knowledge_gate`` (paired bootstrap),
else the arm's result is the no-knowledge model (``train_ctr(fallback_state=...)``).

With ``tune=True``, each backbone first picks its configuration from a small grid
(:data:`TUNING_GRID`) by validation AUC at the first seed, without knowledge; every arm and
seed then runs the chosen configuration, each knowledge arm with the start (warm or fresh)
and knowledge learning rate it chose on its own validation AUC (:data:`KNOWLEDGE_GRID`).
Only the chosen configurations' test metrics are reported.
The cold-start slices are the test rows whose item (or user) had fewer than
``cold_threshold`` interactions in history + train.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from kar.adaptor.config import AdaptorConfig
from kar.errors import ConfigError
from kar.models.baseline import fit_rate_baseline
from kar.models.inputs import CTRFeatures
from kar.models.metrics import auc

if TYPE_CHECKING:
    import torch

    from kar.models.train import TrainResult

BASELINE = "baseline_lr"
ARMS = ("none", "knowledge", "shuffled")
# Shared ModelConfig fields every backbone has: 2 learning rates x 2 embedding weight
# decays (the embedding tables' decay decides most of the gap to the counters-only baseline)
TUNING_GRID: tuple[dict[str, Any], ...] = (
    {"lr": 1e-3, "embedding_weight_decay": 0.01},
    {"lr": 1e-3, "embedding_weight_decay": 0.1},
    {"lr": 3e-3, "embedding_weight_decay": 0.01},
    {"lr": 3e-3, "embedding_weight_decay": 0.1},
)
# Then each knowledge arm (knowledge and shuffled alike) chooses on its own validation AUC
# where it starts ("warm": from the same seed's model without knowledge; "fresh": trained
# jointly from the start) and how fast its knowledge parameters learn (they start at zero,
# so at the backbone's rate they may move too little in the epochs validation allows).
KNOWLEDGE_GRID: tuple[dict[str, Any], ...] = (
    {"start": "warm", "knowledge_lr_scale": 1.0},
    {"start": "warm", "knowledge_lr_scale": 5.0},
    {"start": "fresh", "knowledge_lr_scale": 1.0},
)
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
}


class RunLog:
    """Finished runs of :func:`compare`, one JSON line each in ``path``, so an interrupted
    evaluation resumes where it stopped (and several processes may share the work, each
    taking some backbones). A run counts only when its line carries its arm's fingerprint:
    ``fingerprints[arm]`` (the features that arm trains on and its configuration); a line
    cut short by a kill is ignored."""

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
        return self.path.parent / "warm_start" / name


def _config_text(point: Mapping[str, Any]) -> str:
    return json.dumps(dict(point), sort_keys=True)


def choose_config(
    features: CTRFeatures,
    backbone: str,
    grid: Sequence[Mapping[str, Any]] = TUNING_GRID,
    model_config: Mapping[str, Any] | None = None,
    adaptor_config: AdaptorConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    init_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], TrainResult, list[dict[str, Any]]]:
    """Train ``backbone`` once per grid point (over ``model_config``) and keep the best
    validation AUC (lower validation LogLoss breaks a tie; then the earlier point).
    ``init_state``: every trial warm-starts from it (see :func:`train_ctr`).

    The trials do not read the test split. Returns (chosen point, its run with the test
    split evaluated once, one dict per trial: config, valid_auc, valid_logloss).
    """
    from kar.models.train import evaluate, is_better, train_ctr

    if not grid:
        raise ConfigError("the tuning grid is empty")
    trials: list[dict[str, Any]] = []
    best: tuple[dict[str, Any], TrainResult] | None = None
    for point in grid:
        result = train_ctr(
            features,
            backbone,
            {**(model_config or {}), **point},
            adaptor_config,
            seed=seed,
            progress=progress,
            evaluate_test=False,
            init_state=init_state,
        )
        score = (result.valid_auc, result.valid_logloss)
        trials.append({"config": dict(point), "valid_auc": score[0], "valid_logloss": score[1]})
        if best is None or is_better(score, (best[1].valid_auc, best[1].valid_logloss)):
            best = (dict(point), result)
    assert best is not None
    chosen, result = best
    result.test_auc, result.test_logloss = evaluate(result.model, features.tensors("test"))
    return chosen, result, trials


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


def compare(
    features_with_knowledge: CTRFeatures,
    backbones: Sequence[str] = ("deepfm", "din"),
    seeds: Sequence[int] = (0, 1, 2),
    adaptor_config: AdaptorConfig | None = None,
    model_config: Mapping[str, Any] | None = None,
    progress: bool = True,
    tune: bool = False,
    grid: Sequence[Mapping[str, Any]] | None = None,
    runs_file: Path | None = None,
    fingerprint: str = "",
    knowledge_fingerprint: str = "",
    *,
    model_configs: Mapping[str, Mapping[str, Any]] | None = None,
    arms: Sequence[str] = ARMS,
    warm_start: bool = True,
    cold_threshold: int = 5,
    shuffle_seed: int = 0,
) -> pl.DataFrame:
    """Train every backbone in every arm (see the module docstring) for every seed, plus the
    baseline.

    ``model_config`` applies to every backbone, ``model_configs[backbone]`` on top of it
    (kar.yaml's ``training.model_config``). ``tune``: choose each backbone's configuration
    from ``grid`` (default :data:`TUNING_GRID`) on validation AUC at the first seed without
    knowledge (see :func:`choose_config`); all arms use it. ``runs_file``: a :class:`RunLog`
    of finished runs, skipped on a rerun (the no-knowledge models are kept beside it for
    the warm starts). ``fingerprint`` names the features every arm trains on (data, split,
    history) and ``knowledge_fingerprint`` the knowledge vectors: new vectors retrain the
    knowledge arms and reuse the others.
    """
    from kar.models.train import evaluate, is_better, predict, train_ctr
    from kar.records import stable_hash

    features = features_with_knowledge
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"unknown evaluation arm {unknown[0]!r}; expected one of {ARMS}")
    if not features.has_knowledge and set(arms) != {"none"}:
        raise ConfigError("compare needs features built with knowledge_users / knowledge_items")
    adaptor_config = adaptor_config or AdaptorConfig.load("hea")
    shared = [fingerprint, tune, [dict(g) for g in grid or []], dict(model_config or {})]
    shared.append({k: dict(v) for k, v in (model_configs or {}).items()})
    with_vectors = [*shared, knowledge_fingerprint, adaptor_config.model_dump(mode="json")]
    with_vectors.append([warm_start, list(KNOWLEDGE_GRID) if tune else []])
    log = RunLog(
        runs_file,
        {
            "none": stable_hash(shared, length=16),
            "knowledge": stable_hash(with_vectors, length=16),
            "shuffled": stable_hash([*with_vectors, "shuffled", shuffle_seed], length=16),
        },
    )
    arm_features = {"none": features.without_knowledge()}
    if features.has_knowledge:
        arm_features["knowledge"] = features
    if "shuffled" in arms:
        arm_features["shuffled"] = features.with_shuffled_knowledge(shuffle_seed)
    test = features.tensors("test")
    base = fit_rate_baseline(features)
    base_slices = cold_slices(features, base.test_probs, cold_threshold)
    rows = [
        {
            "backbone": BASELINE,
            "arm": "none",
            "seed": seed,
            "test_auc": base.test_auc,
            "test_logloss": base.test_logloss,
            "valid_auc": base.valid_auc,
            "best_epoch": 0,
            "seconds_per_epoch": base.seconds,
            "config": "{}",
            **base_slices,
            "gate_open": None,
        }
        for seed in seeds
    ]

    def run(
        backbone: str,
        arm: str,
        seed: int,
        config: dict,
        init: Any = None,
        evaluate_test: bool = True,
        fallback: Any = None,
    ) -> TrainResult:
        return train_ctr(
            arm_features[arm],
            backbone,
            config,
            adaptor_config if arm != "none" else None,
            seed=seed,
            progress=progress,
            evaluate_test=evaluate_test,
            init_state=init,
            fallback_state=fallback,
        )

    def record(backbone: str, arm: str, seed: int, result: TrainResult, point: dict) -> None:
        probs = predict(result.model, test)
        rows.append(
            {
                "backbone": backbone,
                "arm": arm,
                "seed": seed,
                "test_auc": result.test_auc,
                "test_logloss": result.test_logloss,
                "valid_auc": result.valid_auc,
                "best_epoch": result.best_epoch,
                "seconds_per_epoch": result.seconds_per_epoch,
                "config": _config_text(point),
                **cold_slices(features, probs, cold_threshold),
                "gate_open": result.gate_open,
            }
        )
        log.add(rows[-1])

    knowledge_arms = [a for a in arms if a != "none"]
    for backbone in backbones:
        base_config = {**(model_config or {}), **((model_configs or {}).get(backbone) or {})}
        chosen: dict[str, Any] | None = None
        arm_choice: dict[str, dict[str, Any]] = {}
        for seed in seeds:
            done = {arm: log.get(backbone, arm, seed) for arm in ("none", *knowledge_arms)}
            none_state: Mapping[str, torch.Tensor] | None = None
            if done["none"] is not None:
                if tune and chosen is None:
                    chosen = json.loads(done["none"]["config"])
                if "none" in arms:
                    rows.append(done["none"])
                todo = [a for a in knowledge_arms if done[a] is None]
                if todo:  # warm starts and the gate's fallback
                    none_state = _load_state(log.state_path(backbone, seed))
            else:
                todo = knowledge_arms
            point = chosen or {}
            if done["none"] is None or (todo and none_state is None):
                if tune and chosen is None:
                    point, result, _ = choose_config(
                        arm_features["none"],
                        backbone,
                        TUNING_GRID if grid is None else grid,
                        base_config,
                        seed=seed,
                        progress=progress,
                    )
                    chosen = point
                else:
                    result = run(backbone, "none", seed, {**base_config, **point})
                none_state = result.model.state_dict()
                _save_state(log.state_path(backbone, seed), none_state)
                if done["none"] is None and "none" in arms:
                    record(backbone, "none", seed, result, point)
            for arm in knowledge_arms:
                if done[arm] is not None:
                    rows.append(done[arm])
                    if tune and arm not in arm_choice:
                        arm_choice[arm] = json.loads(done[arm]["config"])
                    continue

                if tune and arm not in arm_choice:
                    best: tuple[dict[str, Any], TrainResult] | None = None
                    for k in KNOWLEDGE_GRID:  # on this arm's validation AUC only
                        config, warm = _start_and_config({**point, **k}, warm_start)
                        trial = run(
                            backbone, arm, seed, {**base_config, **config},
                            none_state if warm else None, False, none_state,
                        )  # fmt: skip
                        score = (trial.valid_auc, trial.valid_logloss)
                        if best is None or is_better(
                            score, (best[1].valid_auc, best[1].valid_logloss)
                        ):
                            best = ({**point, **k}, trial)
                    assert best is not None
                    arm_point, result = best
                    result.test_auc, result.test_logloss = evaluate(result.model, test)
                    arm_choice[arm] = arm_point
                else:
                    arm_point = arm_choice.get(arm, point)
                    config, warm = _start_and_config(arm_point, warm_start)
                    init = none_state if warm else None
                    result = run(
                        backbone, arm, seed, {**base_config, **config}, init, True, none_state
                    )
                record(backbone, arm, seed, result, arm_point)
    return pl.DataFrame(rows, schema=RESULT_SCHEMA)


def _start_and_config(point: Mapping[str, Any], warm_start: bool) -> tuple[dict[str, Any], bool]:
    """A knowledge arm's grid point -> (model config, whether it warm-starts)."""
    start = point.get("start", "warm" if warm_start else "fresh")
    return {k: v for k, v in point.items() if k != "start"}, start == "warm"


def _save_state(path: Path | None, state: Mapping[str, torch.Tensor]) -> None:
    if path is None:
        return
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(dict(state), tmp)
    tmp.replace(path)


def _load_state(path: Path | None) -> Mapping[str, torch.Tensor] | None:
    if path is None or not path.exists():
        return None
    import torch

    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a file cut short by a kill: train the model again
        return None


def summarize(results: pl.DataFrame) -> pl.DataFrame:
    """Mean ± std per backbone x arm; the relative AUC change over the same backbone without
    knowledge (``gain_vs_none``) and, for the knowledge arm, over the shuffled control
    (``gain_vs_shuffled``); the AUC difference to the baseline; the cold-start slices; and
    ``lift_counts``: the knowledge arm beats both no knowledge and the control by more than
    the largest seed std of the three."""
    summary = (
        results.group_by("backbone", "arm", maintain_order=True)
        .agg(
            pl.col("test_auc").mean().alias("auc_mean"),
            pl.col("test_auc").std().fill_null(0.0).alias("auc_std"),
            pl.col("test_logloss").mean().alias("logloss_mean"),
            pl.col("test_logloss").std().fill_null(0.0).alias("logloss_std"),
            pl.col("seed").n_unique().alias("n_seeds"),
            pl.col("seconds_per_epoch").mean().alias("seconds_per_epoch"),
            pl.col("cold_item_auc").mean().alias("cold_item_auc"),
            pl.col("cold_user_auc").mean().alias("cold_user_auc"),
            pl.col("n_cold_item").first(),
            pl.col("n_cold_user").first(),
            pl.col("gate_open").cast(pl.Int64).sum().alias("gate_open_seeds"),
        )
        .with_columns(pl.col("arm").replace_strict({a: i for i, a in enumerate(ARMS)}).alias("_o"))
        .sort(pl.col("backbone") != BASELINE, "backbone", "_o", maintain_order=True)
        .drop("_o")
    )

    def arm_of(arm: str, prefix: str) -> pl.DataFrame:
        return summary.filter(pl.col("arm") == arm).select(
            "backbone",
            pl.col("auc_mean").alias(f"{prefix}_auc"),
            pl.col("auc_std").alias(f"{prefix}_std"),
            pl.col("cold_item_auc").alias(f"{prefix}_cold_item"),
        )

    baseline = summary.filter(pl.col("backbone") == BASELINE)["auc_mean"]
    base_auc = float(baseline[0]) if len(baseline) else math.nan
    knowledge = pl.col("arm") == "knowledge"
    spread = pl.max_horizontal("auc_std", "_none_std", "_shuf_std")
    return (
        summary.join(arm_of("none", "_none"), on="backbone", how="left", maintain_order="left")
        .join(arm_of("shuffled", "_shuf"), on="backbone", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("arm") != "none")
            .then(pl.col("auc_mean") / pl.col("_none_auc") - 1.0)
            .alias("gain_vs_none"),
            pl.when(knowledge)
            .then(pl.col("auc_mean") / pl.col("_shuf_auc") - 1.0)
            .alias("gain_vs_shuffled"),
            pl.when(pl.col("arm") != "none")
            .then(pl.col("cold_item_auc") - pl.col("_none_cold_item"))
            .alias("cold_item_gain"),
            (pl.col("auc_mean") - base_auc).alias("auc_vs_baseline"),
            pl.when(knowledge)
            .then((pl.col("auc_mean") - pl.max_horizontal("_none_auc", "_shuf_auc")) > spread)
            .alias("lift_counts"),
        )
        .drop("_none_auc", "_none_std", "_none_cold_item", "_shuf_auc", "_shuf_std")
        .drop("_shuf_cold_item")
    )


def headline(summary: pl.DataFrame) -> dict[str, Any]:
    """The figures a benchmark prints last: backbones at or above the baseline without
    knowledge, the mean gain of knowledge over the shuffled control (information) and over
    no knowledge, and how many backbones improve."""
    rows = summary.filter(pl.col("backbone") != BASELINE)
    none = rows.filter(pl.col("arm") == "none")
    know = rows.filter(pl.col("arm") == "knowledge")
    shuf = rows.filter(pl.col("arm") == "shuffled")
    base = summary.filter(pl.col("backbone") == BASELINE)["auc_mean"]
    base_auc = float(base[0]) if len(base) else math.nan

    def mean(values: pl.Series) -> float:
        clean = values.drop_nulls()
        return float(clean.mean()) if len(clean) else math.nan  # type: ignore[arg-type]

    return {
        "backbones": none.height,
        "backbones_above_baseline": int((none["auc_mean"] >= base_auc).sum()),
        "info_gain_mean": mean(know["gain_vs_shuffled"]),
        "backbones_improved": int((know["gain_vs_none"] > 0).sum()),
        "backbones_lift_counts": int(know["lift_counts"].fill_null(False).sum()),
        "mean_rel_auc_gain": mean(know["gain_vs_none"]),
        "shuffled_mean_rel_auc_gain": mean(shuf["gain_vs_none"]),
    }


def headline_line(summary: pl.DataFrame) -> str:
    """``backbones_above_baseline: N/7 info_gain_mean: X.XX% backbones_improved: N/7
    mean_rel_auc_gain: X.XX%``."""
    h = headline(summary)
    n = h["backbones"]
    return (
        f"backbones_above_baseline: {h['backbones_above_baseline']}/{n} "
        f"info_gain_mean: {100 * h['info_gain_mean']:.2f}% "
        f"backbones_improved: {h['backbones_improved']}/{n} "
        f"mean_rel_auc_gain: {100 * h['mean_rel_auc_gain']:.2f}%"
    )


def _pct(value: float | None) -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{100 * value:+.2f}%")
    )


def _auc(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def markdown_table(summary: pl.DataFrame) -> str:
    head = (
        "| backbone | arm | AUC mean ± std | LogLoss mean ± std | n seeds | vs none "
        "| vs shuffled | AUC − baseline | cold-item AUC | cold-user AUC | gate open "
        "| train s/epoch |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in summary.iter_rows(named=True):
        counts = " ✓" if r["lift_counts"] else ""
        gate = "" if r["arm"] == "none" else f"{r['gate_open_seeds']}/{r['n_seeds']}"
        lines.append(
            f"| {r['backbone']} | {r['arm']} "
            f"| {r['auc_mean']:.4f} ± {r['auc_std']:.4f} "
            f"| {r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} | {r['n_seeds']} "
            f"| {_pct(r['gain_vs_none'])} | {_pct(r['gain_vs_shuffled'])}{counts} "
            f"| {r['auc_vs_baseline']:+.4f} "
            f"| {_auc(r['cold_item_auc'])} | {_auc(r['cold_user_auc'])} "
            f"| {gate} "
            f"| {r['seconds_per_epoch']:.2f} |"
        )
    return "\n".join(lines)


def _bar_chart(summary: pl.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['backbone']}\n{r['arm']}" for r in summary.iter_rows(named=True)]
    palette = {"none": "tab:blue", "knowledge": "tab:orange", "shuffled": "tab:grey"}
    colours = [
        "black" if b == BASELINE else palette[a]
        for b, a in zip(summary["backbone"], summary["arm"], strict=True)
    ]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 * len(labels)), 4.0))
    ax.bar(labels, summary["auc_mean"], yerr=summary["auc_std"], color=colours, capsize=4)
    low = float((summary["auc_mean"] - summary["auc_std"]).min())
    high = float((summary["auc_mean"] + summary["auc_std"]).max())
    pad = max(0.01, 0.2 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tuning_markdown(results: pl.DataFrame) -> str:
    """The configurations chosen on validation, when ``compare`` tuned (else nothing)."""
    if "config" not in results.columns:
        return ""
    tuned = results.filter((pl.col("backbone") != BASELINE) & (pl.col("config") != "{}"))
    if tuned.height == 0:
        return ""
    chosen = tuned.group_by("backbone", "arm", maintain_order=True).agg(pl.col("config").first())
    lines = [
        "Configuration chosen per backbone on validation AUC (first seed): without knowledge, "
        "then each knowledge arm's knowledge learning rate on its own; test metrics above are "
        "those of the chosen configurations only:\n",
        "| backbone | arm | config |",
        "|---|---|---|",
    ]
    for r in chosen.iter_rows(named=True):
        lines.append(f"| {r['backbone']} | {r['arm']} | `{r['config']}` |")
    return "\n".join(lines) + "\n\n"


def write_report(
    results: pl.DataFrame,
    out_dir: str | Path,
    title: str,
    command: str,
    cold_threshold: int = 5,
) -> tuple[Path, Path]:
    """Write ``report.md`` (table + command), ``auc.png`` and ``results.csv`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    md_path, png_path = out / "report.md", out / "auc.png"
    results.write_csv(out / "results.csv")
    _bar_chart(summary, png_path, title)
    md = (
        f"# {title}\n\nProduced by:\n\n```\n{command}\n```\n\n"
        f"{markdown_table(summary)}\n\n"
        f"Test split read once per run, after selecting the epoch on validation AUC. "
        f"`{BASELINE}`: logistic regression on the item's and the user's positive rate "
        f"before each sample. Arms: `none` without knowledge; `knowledge` with the "
        f"project's vectors; `shuffled`, the control: the same vectors permuted across "
        f"entities (same distribution, no information), trained exactly like `knowledge`. "
        f"✓: the knowledge lift counts (above both `none` and `shuffled` by more than the "
        f"largest seed std). Cold-item / cold-user AUC: test rows whose item / user had "
        f"fewer than {cold_threshold} interactions in history + train. Gate open: in how "
        f"many seeds the knowledge model was kept (it must beat the model without "
        f"knowledge on validation in a paired bootstrap; else the arm is that model).\n\n"
        f"{_tuning_markdown(results)}"
        f"![test AUC]({png_path.name})\n"
    )
    md_path.write_text(md, encoding="utf-8")
    return md_path, png_path
