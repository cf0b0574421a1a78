"""Evaluation harness: backbones with vs without knowledge over seeds, beside the baseline.

``compare`` -> one row per (backbone, knowledge, seed); ``summarize`` -> mean ± std per
backbone x knowledge with the relative AUC gain; ``write_report`` -> markdown table + PNG.

With ``tune=True``, each backbone (with and without knowledge separately) first picks its
configuration from a small grid (:data:`TUNING_GRID`) by validation AUC at the first seed;
the trials never read the test split. Every seed then runs the chosen configuration, whose
test metrics are the only ones reported; the choice is recorded in the ``config`` column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from kar.adaptor.config import AdaptorConfig
from kar.errors import ConfigError
from kar.models.baseline import fit_rate_baseline
from kar.models.inputs import CTRFeatures

if TYPE_CHECKING:
    from kar.models.train import TrainResult

BASELINE = "baseline_lr"
# Shared ModelConfig fields every backbone has: 2 learning rates x 2 weight decays.
TUNING_GRID: tuple[dict[str, Any], ...] = (
    {"lr": 1e-3, "weight_decay": 0.0},
    {"lr": 3e-3, "weight_decay": 0.0},
    {"lr": 1e-3, "weight_decay": 1e-5},
    {"lr": 3e-3, "weight_decay": 1e-5},
)
RESULT_SCHEMA = {
    "backbone": pl.Utf8,
    "knowledge": pl.Boolean,
    "seed": pl.Int64,
    "test_auc": pl.Float64,
    "test_logloss": pl.Float64,
    "valid_auc": pl.Float64,
    "best_epoch": pl.Int64,
    "seconds_per_epoch": pl.Float64,
    "config": pl.Utf8,  # the grid point chosen on validation (JSON; "{}" when not tuned)
}


class RunLog:
    """Finished runs of :func:`compare`, one JSON line each in ``path``, so an interrupted
    evaluation resumes where it stopped (and several processes may share the work, each
    taking some backbones). A run counts only when its line carries its arm's fingerprint:
    ``fingerprints[knowledge]`` (the features that arm trains on and its configuration); a
    line cut short by a kill is ignored."""

    def __init__(self, path: Path | None, fingerprints: Mapping[bool, str]) -> None:
        self.path = path
        self.fingerprints = dict(fingerprints)
        self.rows: dict[tuple[str, bool, int], dict[str, Any]] = {}
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
            if not isinstance(row, dict) or "knowledge" not in row:
                continue
            knowledge = bool(row["knowledge"])
            if row.get("fingerprint") == self.fingerprints[knowledge]:
                self.rows[(row["backbone"], knowledge, int(row["seed"]))] = row

    def get(self, backbone: str, knowledge: bool, seed: int) -> dict[str, Any] | None:
        self._refresh()
        row = self.rows.get((backbone, knowledge, seed))
        return None if row is None else {k: row[k] for k in RESULT_SCHEMA}

    def add(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fingerprint = self.fingerprints[bool(row["knowledge"])]
        line = json.dumps({**row, "fingerprint": fingerprint}) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:  # one short append: atomic
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


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
) -> tuple[dict[str, Any], TrainResult, list[dict[str, Any]]]:
    """Train ``backbone`` once per grid point (over ``model_config``) and keep the best
    validation AUC (lower validation LogLoss breaks a tie; then the earlier point).

    The trials do not read the test split. Returns (chosen point, its run with the test
    split evaluated once, one dict per trial: config, valid_auc, valid_logloss).
    """
    from kar.models.train import _better, evaluate, train_ctr

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
        )
        score = (result.valid_auc, result.valid_logloss)
        trials.append({"config": dict(point), "valid_auc": score[0], "valid_logloss": score[1]})
        if best is None or _better(score, (best[1].valid_auc, best[1].valid_logloss)):
            best = (dict(point), result)
    assert best is not None
    chosen, result = best
    result.test_auc, result.test_logloss = evaluate(result.model, features.tensors("test"))
    return chosen, result, trials


def compare(
    features_with_knowledge: CTRFeatures,
    backbones: Sequence[str] = ("deepfm", "din"),
    seeds: Sequence[int] = (0, 1, 2),
    adaptor_config: AdaptorConfig | None = None,
    model_config: dict | None = None,
    progress: bool = True,
    tune: bool = False,
    grid: Sequence[Mapping[str, Any]] | None = None,
    runs_file: Path | None = None,
    fingerprint: str = "",
    knowledge_fingerprint: str = "",
) -> pl.DataFrame:
    """Train every backbone without and with knowledge for every seed, plus the baseline.

    ``tune``: choose each (backbone, knowledge) configuration from ``grid`` (default
    :data:`TUNING_GRID`, overriding ``model_config``) on validation AUC at the first seed,
    then run every seed with it (see :func:`choose_config`). ``runs_file``: a
    :class:`RunLog` of finished runs, skipped on a rerun. ``fingerprint`` names the
    features both arms train on (data, split, history) and ``knowledge_fingerprint`` the
    knowledge vectors only the with-knowledge arm reads (the configuration is added to
    both here): new vectors retrain the with-knowledge runs and reuse the others.
    """
    from kar.models.train import train_ctr
    from kar.records import stable_hash

    features = features_with_knowledge
    if not features.has_knowledge:
        raise ConfigError("compare needs features built with knowledge_users / knowledge_items")
    adaptor_config = adaptor_config or AdaptorConfig.load("hea")
    shared = [fingerprint, tune, [dict(g) for g in grid or []], model_config or {}]
    log = RunLog(
        runs_file,
        {
            False: stable_hash(shared, length=16),
            True: stable_hash(
                [*shared, knowledge_fingerprint, adaptor_config.model_dump(mode="json")],
                length=16,
            ),
        },
    )
    plain = features.without_knowledge()
    base = fit_rate_baseline(features)
    rows = []
    for seed in seeds:
        rows.append(
            {
                "backbone": BASELINE,
                "knowledge": False,
                "seed": seed,
                "test_auc": base.test_auc,
                "test_logloss": base.test_logloss,
                "valid_auc": base.valid_auc,
                "best_epoch": 0,
                "seconds_per_epoch": base.seconds,
                "config": "{}",
            }
        )
    for backbone in backbones:
        chosen: dict[bool, dict[str, Any]] = {}
        for seed in seeds:
            for with_knowledge in (False, True):
                done = log.get(backbone, with_knowledge, seed)
                if done is not None:
                    rows.append(done)
                    if tune and with_knowledge not in chosen:
                        chosen[with_knowledge] = json.loads(done["config"])
                    continue
                feats = features if with_knowledge else plain
                adaptor = adaptor_config if with_knowledge else None
                if tune and with_knowledge not in chosen:
                    point, result, _ = choose_config(
                        feats,
                        backbone,
                        TUNING_GRID if grid is None else grid,
                        model_config,
                        adaptor,
                        seed=seed,
                        progress=progress,
                    )
                    chosen[with_knowledge] = point
                else:
                    point = chosen.get(with_knowledge, {})
                    result = train_ctr(
                        feats,
                        backbone,
                        {**(model_config or {}), **point} if point else model_config,
                        adaptor,
                        seed=seed,
                        progress=progress,
                    )
                rows.append(
                    {
                        "backbone": backbone,
                        "knowledge": with_knowledge,
                        "seed": seed,
                        "test_auc": result.test_auc,
                        "test_logloss": result.test_logloss,
                        "valid_auc": result.valid_auc,
                        "best_epoch": result.best_epoch,
                        "seconds_per_epoch": result.seconds_per_epoch,
                        "config": _config_text(point),
                    }
                )
                log.add(rows[-1])
    return pl.DataFrame(rows, schema=RESULT_SCHEMA)


def summarize(results: pl.DataFrame) -> pl.DataFrame:
    """Mean ± std per backbone x knowledge; relative AUC gain over the same backbone
    without knowledge, and AUC difference to the baseline."""
    summary = (
        results.group_by("backbone", "knowledge", maintain_order=True)
        .agg(
            pl.col("test_auc").mean().alias("auc_mean"),
            pl.col("test_auc").std().fill_null(0.0).alias("auc_std"),
            pl.col("test_logloss").mean().alias("logloss_mean"),
            pl.col("test_logloss").std().fill_null(0.0).alias("logloss_std"),
            pl.col("seed").n_unique().alias("n_seeds"),
            pl.col("seconds_per_epoch").mean().alias("seconds_per_epoch"),
        )
        .sort(pl.col("backbone") != BASELINE, "backbone", "knowledge", maintain_order=True)
    )
    without = summary.filter(~pl.col("knowledge")).select(
        "backbone", pl.col("auc_mean").alias("_auc_without")
    )
    baseline = summary.filter(pl.col("backbone") == BASELINE)["auc_mean"]
    base_auc = float(baseline[0]) if len(baseline) else math.nan
    return (
        summary.join(without, on="backbone", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("knowledge"))
            .then(pl.col("auc_mean") / pl.col("_auc_without") - 1.0)
            .otherwise(None)
            .alias("rel_auc_gain"),
            (pl.col("auc_mean") - base_auc).alias("auc_vs_baseline"),
        )
        .drop("_auc_without")
    )


def _markdown_table(summary: pl.DataFrame) -> str:
    head = (
        "| backbone | knowledge | AUC mean ± std | LogLoss mean ± std | n seeds "
        "| rel. AUC gain | AUC − baseline | train s/epoch |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in summary.iter_rows(named=True):
        gain = "" if r["rel_auc_gain"] is None else f"{100 * r['rel_auc_gain']:+.2f}%"
        lines.append(
            f"| {r['backbone']} | {'yes' if r['knowledge'] else 'no'} "
            f"| {r['auc_mean']:.4f} ± {r['auc_std']:.4f} "
            f"| {r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} | {r['n_seeds']} "
            f"| {gain} | {r['auc_vs_baseline']:+.4f} | {r['seconds_per_epoch']:.2f} |"
        )
    return "\n".join(lines)


def _bar_chart(summary: pl.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['backbone']}\n{'+knowledge' if r['knowledge'] else 'no knowledge'}"
        for r in summary.iter_rows(named=True)
    ]
    colours = [
        "grey" if b == BASELINE else ("tab:orange" if k else "tab:blue")
        for b, k in zip(summary["backbone"], summary["knowledge"], strict=True)
    ]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels)), 4.0))
    ax.bar(labels, summary["auc_mean"], yerr=summary["auc_std"], color=colours, capsize=4)
    low = float((summary["auc_mean"] - summary["auc_std"]).min())
    high = float((summary["auc_mean"] + summary["auc_std"]).max())
    pad = max(0.01, 0.2 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
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
    chosen = tuned.group_by("backbone", "knowledge", maintain_order=True).agg(
        pl.col("config").first()
    )
    lines = [
        "Configurations chosen per backbone on validation AUC (first seed); test metrics "
        "above are those of the chosen configuration only:\n",
        "| backbone | knowledge | config |",
        "|---|---|---|",
    ]
    for r in chosen.iter_rows(named=True):
        lines.append(f"| {r['backbone']} | {'yes' if r['knowledge'] else 'no'} | `{r['config']}` |")
    return "\n".join(lines) + "\n\n"


def write_report(
    results: pl.DataFrame, out_dir: str | Path, title: str, command: str
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
        f"{_markdown_table(summary)}\n\n"
        f"Test split read once per run, after selecting the epoch on validation AUC. "
        f"`{BASELINE}`: logistic regression on the item's and the user's positive rate "
        f"before each sample. A gain smaller than the seed std is noise.\n\n"
        f"{_tuning_markdown(results)}"
        f"![test AUC]({png_path.name})\n"
    )
    md_path.write_text(md, encoding="utf-8")
    return md_path, png_path
