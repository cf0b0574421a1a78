"""The evaluation's report: :func:`summarize` (mean ± std per backbone x arm, gains over no
knowledge and over the shuffled control, cold-start slices, whether a lift counts), the
headline figures a benchmark prints last, the markdown table and the PNG plot
(:func:`write_report`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from kar.models.runlog import BASELINE, SUMMARY_ARMS, UNGATED


def with_ungated_rows(results: pl.DataFrame) -> pl.DataFrame:
    """``results`` plus one row per knowledge-arm run for the same run without the gate
    (arm ``knowledge (ungated)`` / ``shuffled (ungated)``: its best trained epoch's test
    metrics; null where the run was logged before kar recorded them)."""
    missing = [c for c in ("ungated_test_auc", "ungated_test_logloss", "ungated_valid_auc")
               if c not in results.columns]  # fmt: skip
    results = results.with_columns(pl.lit(None, pl.Float64).alias(c) for c in missing)
    ungated = results.filter(pl.col("arm").is_in(list(UNGATED))).with_columns(
        pl.col("arm").replace_strict(UNGATED, return_dtype=pl.Utf8),
        pl.col("ungated_test_auc").alias("test_auc"),
        pl.col("ungated_test_logloss").alias("test_logloss"),
        pl.col("ungated_valid_auc").alias("valid_auc"),
        pl.lit(None, pl.Float64).alias("cold_item_auc"),
        pl.lit(None, pl.Float64).alias("cold_user_auc"),
        pl.lit(None, pl.Boolean).alias("gate_open"),
    )
    return pl.concat([results, ungated.select(results.columns)], how="vertical_relaxed")


def summarize(results: pl.DataFrame) -> pl.DataFrame:
    """Mean ± std per backbone x arm (the ungated arms included, :func:`with_ungated_rows`);
    the relative AUC change over the same backbone without knowledge (``gain_vs_none``) and,
    for the knowledge arm, over the shuffled control (``gain_vs_shuffled``; ungated knowledge
    over ungated shuffled); the AUC difference to the baseline; the cold-start slices;
    ``lift_counts``: the (gated) knowledge arm beats both no knowledge and the control by
    more than the largest seed std of the three; and on the knowledge row ``info_gain``, the
    ungated knowledge arm over the ungated control, with ``info_counts``: by more than the
    larger seed std of the two (information, apart from capacity and the gate)."""
    summary = arm_means(results)
    baseline = summary.filter(pl.col("backbone") == BASELINE)["auc_mean"]
    base_auc = float(baseline[0]) if len(baseline) else math.nan
    joined = summary
    prefixes = {"none": "_none", "shuffled": "_shuf"}
    prefixes.update({UNGATED["knowledge"]: "_uk", UNGATED["shuffled"]: "_us"})
    for arm, prefix in prefixes.items():
        reference = _arm_columns(summary, arm, prefix)
        joined = joined.join(reference, on="backbone", how="left", maintain_order="left")
    return joined.with_columns(_gain_columns(base_auc)).drop(
        [c for c in joined.columns if c.startswith("_")]
    )


def arm_means(results: pl.DataFrame) -> pl.DataFrame:
    """One row per backbone x arm (the ungated arms included): mean ± std of the test
    metrics over seeds, the cold-start slices and in how many seeds the gate opened;
    the baseline first, then the backbones by name, each in :data:`SUMMARY_ARMS` order."""
    known = pl.col("test_auc").is_not_null()
    return (
        with_ungated_rows(results)
        .group_by("backbone", "arm", maintain_order=True)
        .agg(
            pl.col("test_auc").mean().alias("auc_mean"),
            pl.col("test_auc").std().fill_null(0.0).alias("auc_std"),
            pl.col("test_logloss").mean().alias("logloss_mean"),
            pl.col("test_logloss").std().fill_null(0.0).alias("logloss_std"),
            pl.col("seed").filter(known).n_unique().alias("n_seeds"),
            pl.col("seconds_per_epoch").mean().alias("seconds_per_epoch"),
            pl.col("cold_item_auc").mean().alias("cold_item_auc"),
            pl.col("cold_user_auc").mean().alias("cold_user_auc"),
            pl.col("n_cold_item").first(),
            pl.col("n_cold_user").first(),
            pl.col("gate_open").cast(pl.Int64).sum().alias("gate_open_seeds"),
        )
        .with_columns(
            pl.col("arm")
            .replace_strict({a: i for i, a in enumerate(SUMMARY_ARMS)}, return_dtype=pl.Int64)
            .alias("_o")
        )
        .sort(pl.col("backbone") != BASELINE, "backbone", "_o", maintain_order=True)
        .drop("_o")
    )


def _arm_columns(summary: pl.DataFrame, arm: str, prefix: str) -> pl.DataFrame:
    """One arm's AUC mean, std and cold-item AUC per backbone, named ``{prefix}_…``."""
    return summary.filter(pl.col("arm") == arm).select(
        "backbone",
        pl.col("auc_mean").alias(f"{prefix}_auc"),
        pl.col("auc_std").alias(f"{prefix}_std"),
        pl.col("cold_item_auc").alias(f"{prefix}_cold_item"),
    )


def _gain_columns(base_auc: float) -> list[pl.Expr]:
    """:func:`summarize`'s gains, over the reference arms' ``_none`` / ``_shuf`` / ``_uk`` /
    ``_us`` columns and the baseline's AUC."""
    knowledge = pl.col("arm") == "knowledge"
    ungated_knowledge = pl.col("arm") == UNGATED["knowledge"]
    spread = pl.max_horizontal("auc_std", "_none_std", "_shuf_std")
    info_spread = pl.max_horizontal("_uk_std", "_us_std")
    return [
        pl.when(pl.col("arm") != "none")
        .then(pl.col("auc_mean") / pl.col("_none_auc") - 1.0)
        .alias("gain_vs_none"),
        pl.when(knowledge)
        .then(pl.col("auc_mean") / pl.col("_shuf_auc") - 1.0)
        .when(ungated_knowledge)
        .then(pl.col("auc_mean") / pl.col("_us_auc") - 1.0)
        .alias("gain_vs_shuffled"),
        pl.when(pl.col("arm") != "none")
        .then(pl.col("cold_item_auc") - pl.col("_none_cold_item"))
        .alias("cold_item_gain"),
        (pl.col("auc_mean") - base_auc).alias("auc_vs_baseline"),
        pl.when(knowledge)
        .then((pl.col("auc_mean") - pl.max_horizontal("_none_auc", "_shuf_auc")) > spread)
        .alias("lift_counts"),
        pl.when(knowledge).then(pl.col("_uk_auc") / pl.col("_us_auc") - 1.0).alias("info_gain"),
        pl.when(knowledge)
        .then((pl.col("_uk_auc") - pl.col("_us_auc")) > info_spread)
        .alias("info_counts"),
    ]


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

    ushuf = rows.filter(pl.col("arm") == UNGATED["shuffled"])
    info = know["info_gain"] if "info_gain" in know.columns else pl.Series([], dtype=pl.Float64)
    info_counts = know["info_counts"] if "info_counts" in know.columns else pl.Series([])
    return {
        "backbones": none.height,
        "backbones_above_baseline": int((none["auc_mean"] >= base_auc).sum()),
        "info_gain_mean": mean(know["gain_vs_shuffled"]),
        "backbones_improved": int((know["gain_vs_none"] > 0).sum()),
        "backbones_lift_counts": int(know["lift_counts"].fill_null(False).sum()),
        "mean_rel_auc_gain": mean(know["gain_vs_none"]),
        "shuffled_mean_rel_auc_gain": mean(shuf["gain_vs_none"]),
        # without the gate: ungated knowledge over the ungated control (information), and
        # the ungated control over no knowledge (capacity)
        "ungated_info_gain_mean": mean(info),
        "backbones_info_counts": int(info_counts.fill_null(False).sum()),
        "ungated_shuffled_mean_rel_auc_gain": mean(ushuf["gain_vs_none"]),
    }


def headline_line(summary: pl.DataFrame) -> str:
    """``backbones_above_baseline: N/7 info_gain_mean: X.XX% backbones_improved: N/7
    mean_rel_auc_gain: X.XX% ungated_info_gain_mean: X.XX% ungated_shuffled_gain: X.XX%``
    (the last two: ungated knowledge over the ungated control, the ungated control over
    no knowledge)."""
    h = headline(summary)
    n = h["backbones"]
    return (
        f"backbones_above_baseline: {h['backbones_above_baseline']}/{n} "
        f"info_gain_mean: {100 * h['info_gain_mean']:.2f}% "
        f"backbones_improved: {h['backbones_improved']}/{n} "
        f"mean_rel_auc_gain: {100 * h['mean_rel_auc_gain']:.2f}% "
        f"ungated_info_gain_mean: {100 * h['ungated_info_gain_mean']:.2f}% "
        f"ungated_shuffled_gain: {100 * h['ungated_shuffled_mean_rel_auc_gain']:.2f}%"
    )


def _pct(value: float | None) -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{100 * value:+.2f}%")
    )


def _auc(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def _mean_std(mean: float | None, std: float | None) -> str:
    return "– (not logged)" if mean is None else f"{mean:.4f} ± {std:.4f}"


def markdown_table(summary: pl.DataFrame) -> str:
    head = (
        "| backbone | arm | AUC mean ± std | LogLoss mean ± std | n seeds | vs none "
        "| vs shuffled | info (ungated) | AUC − baseline | cold-item AUC | cold-user AUC "
        "| gate open | train s/epoch |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    know = summary.filter(pl.col("arm") == "knowledge")
    info_ok = dict(zip(know["backbone"], know["info_counts"].fill_null(False), strict=True))
    for r in summary.iter_rows(named=True):
        ungated_ok = r["arm"] == UNGATED["knowledge"] and info_ok.get(r["backbone"], False)
        counts = " ✓" if r["lift_counts"] or ungated_ok else ""
        info = _pct(r.get("info_gain")) + (" ✓" if r.get("info_counts") else "")
        gate = f"{r['gate_open_seeds']}/{r['n_seeds']}" if r["arm"] in UNGATED else ""
        vs_base = "" if r["auc_vs_baseline"] is None else f"{r['auc_vs_baseline']:+.4f}"
        lines.append(
            f"| {r['backbone']} | {r['arm']} "
            f"| {_mean_std(r['auc_mean'], r['auc_std'])} "
            f"| {_mean_std(r['logloss_mean'], r['logloss_std'])} | {r['n_seeds']} "
            f"| {_pct(r['gain_vs_none'])} | {_pct(r['gain_vs_shuffled'])}{counts} "
            f"| {info} | {vs_base} "
            f"| {_auc(r['cold_item_auc'])} | {_auc(r['cold_user_auc'])} "
            f"| {gate} "
            f"| {r['seconds_per_epoch']:.2f} |"
        )
    return "\n".join(lines)


def _bar_chart(summary: pl.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summary.filter(pl.col("auc_mean").is_not_null())
    labels = [f"{r['backbone']}\n{r['arm']}" for r in summary.iter_rows(named=True)]
    palette = {"none": "tab:blue", "knowledge": "tab:orange", "shuffled": "tab:grey"}
    palette |= {UNGATED["knowledge"]: "navajowhite", UNGATED["shuffled"]: "lightgrey"}
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
        f"{_report_notes(cold_threshold)}\n\n"
        f"{_tuning_markdown(results)}"
        f"![test AUC]({png_path.name})\n"
    )
    md_path.write_text(md, encoding="utf-8")
    return md_path, png_path


def _report_notes(cold_threshold: int) -> str:
    """The paragraph under the table: how to read the arms, the slices and the gate."""
    return (
        f"Test split read once per run, after selecting the epoch on validation AUC. "
        f"`{BASELINE}`: logistic regression on the item's and the user's positive rate "
        f"before each sample. Arms: `none` without knowledge; `knowledge` with the "
        f"project's vectors; `shuffled`, the control: the same vectors permuted across "
        f"entities (same distribution, no information), trained exactly like `knowledge`. "
        f"✓ on `knowledge`: the knowledge lift counts (above both `none` and `shuffled` by "
        f"more than the largest seed std). Cold-item / cold-user AUC: test rows whose item / "
        f"user had fewer than {cold_threshold} interactions in history + train. Gate open: "
        f"in how many seeds the knowledge model was kept (it must beat the model without "
        f"knowledge on validation in a paired bootstrap; else the arm is that model, and "
        f"reads +0.00%). `knowledge (ungated)` / `shuffled (ungated)`: the same runs before "
        f"the gate, at their best trained epoch on validation (epoch >= 1, no fallback), so "
        f"capacity (`shuffled (ungated)` vs none) and information stay visible when a gate "
        f"closes; their `vs shuffled` and the `info (ungated)` column: ungated knowledge "
        f"over the ungated control, ✓ when above it by more than the larger seed std of the "
        f"two. `– (not logged)`: runs logged before kar recorded the ungated metrics."
    )
