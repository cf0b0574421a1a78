"""ReLLa on ML-100K: semantic behaviour retrieval as the CTR models' history, and the LLM ranker.

    OMP_NUM_THREADS=1 python benchmarks/rella.py [--parts ctr,llm-recent,llm-retrieved]
        [--seeds 3] [--backbones din,deepfm] [--history-len 20] [--tune]
        [--rank-rows 1000] [--rank-history 10] [--work DIR] [--ml100k PATH]

- ``ctr``: each backbone (DIN attends over the behaviour sequence, DeepFM mean-pools it as a
  field) with the K most recent interactions before each sample vs the K retrieved ones
  (`training.history_selection: retrieved`: the most similar to the target item of the
  user's last 200, by the cosine of MiniLM item-text vectors), 3 seeds, no knowledge, beside
  `baseline_lr`; mean ± std test AUC, and whether retrieved differs from recent by more than
  the seed spread (the larger std). ~10 min on one core.
- ``llm-recent`` / ``llm-retrieved``: the LLM ranker (the bundled SmolLM2-135M-Instruct,
  bf16, `kar rank`'s code) on the same --rank-rows sampled test rows: P(yes) from the answer
  logits, AUC; ~0.3-0.4 s per prompt on one core, so ~6 min per part for 1,000 rows.

Parts can run in separate processes: each records its figures in --work/rella_results.json,
and every run prints the tables and the last line from what is recorded (nan where a part
has not run): ``rella_retrieved_vs_recent_din: +X.XX% llm_ranker_auc_recent: 0.XXXX
llm_ranker_auc_retrieved: 0.XXXX``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
ML100K = REPO.parent / "shared" / "data" / "ml-100k"
PARTS = ("ctr", "llm-recent", "llm-retrieved")
SELECTIONS = ("recent", "retrieved")


def movielens_project(root: Path, data: Path, history_len: int):
    """The ML-100K project (kar's time split, the movies scenario), created once."""
    from kar.project import CONFIG_FILE, ProjectFolder, ProjectSettings

    if not (root / CONFIG_FILE).exists():
        root.mkdir(parents=True, exist_ok=True)
        settings = ProjectSettings(name="ml-100k-rella", scenario="movies")
        settings.dataset.kind = "movielens"
        settings.dataset.path = str(data)
        ProjectFolder(root, settings).save()
    project = ProjectFolder.load(root)
    project.settings.training.history_len = history_len
    return project


def run_ctr(project, data, backbones: list[str], seeds: int, tune: bool, epochs: int | None):
    """Test AUC per backbone x history selection x seed, and the baseline's."""
    from kar.models.harness import compare
    from kar.pipeline import ctr_features

    out: dict = {"backbones": {}, "seconds": {}}
    config = {"max_epochs": epochs} if epochs else None
    for selection in SELECTIONS:
        start = time.perf_counter()
        project.settings.training.history_selection = selection
        features = ctr_features(project, *data, with_knowledge=False)
        built = time.perf_counter() - start
        rows = compare(features, tuple(backbones), tuple(range(seeds)), arms=("none",),
                       tune=tune, model_config=config, progress=False)  # fmt: skip
        out["seconds"][selection] = {"features": built, "total": time.perf_counter() - start}
        for row in rows.iter_rows(named=True):
            if row["backbone"] == "baseline_lr":
                out["baseline_lr"] = row["test_auc"]
                continue
            per = out["backbones"].setdefault(row["backbone"], {})
            per.setdefault(selection, []).append(row["test_auc"])
    return out


def run_llm(project, data, selection: str, rows: int, history: int, batch: int) -> dict:
    """The LLM ranker's AUC with one history selection (the same sample every part)."""
    from kar.ranking.evaluate import rank_project

    report = rank_project(
        project, data, backend="transformers", batch_size=batch, rows=rows,
        history_len=history, selections=(selection,), seed=0,
    )  # fmt: skip
    return {
        "model": report.model,
        "rows": report.rows,
        "positives": report.positives,
        "history_len": report.history_len,
        "auc": report.auc[selection],
        "seconds": report.seconds[selection],
        "tokens": report.prompt_tokens[selection],
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def ctr_table(ctr: dict) -> tuple[list[str], dict[str, float]]:
    """Markdown rows per backbone and the relative AUC change retrieved vs recent."""
    lines = [
        "| backbone | recent-K AUC | retrieved-K AUC | retrieved vs recent | above seed spread |",
        "|---|---|---|---|---|",
    ]
    change = {}
    for backbone, per in ctr.get("backbones", {}).items():
        (m0, s0), (m1, s1) = (mean_std(per.get(s, [])) for s in SELECTIONS)
        change[backbone] = (m1 - m0) / m0 * 100
        runs = min(len(per.get(s, [])) for s in SELECTIONS)
        above = "n/a (1 seed)" if runs < 2 else "yes" if abs(m1 - m0) > max(s0, s1) else "no"
        lines.append(f"| {backbone} | {m0:.4f} ± {s0:.4f} | {m1:.4f} ± {s1:.4f} | "
                     f"{change[backbone]:+.2f}% | {above} |")  # fmt: skip
    if "baseline_lr" in ctr:
        lines.append(f"| baseline_lr | {ctr['baseline_lr']:.4f} | (no history) | | |")
    return lines, change


def llm_table(llm: dict) -> list[str]:
    lines = ["| history | rows (positive) | AUC | seconds | s/prompt | tokens/prompt |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for selection, r in llm.items():
        n = max(r["rows"], 1)
        lines.append(
            f"| {selection}-{r['history_len']} | {r['rows']} ({r['positives']}) | "
            f"{r['auc']:.4f} | {r['seconds']:.0f} | {r['seconds'] / n:.2f} | "
            f"{r['tokens'] / n:.0f} |"
        )
    return lines


def report(results: dict, command: str) -> None:
    """Both tables, the machine, the command and the last line, from what is recorded."""
    from machine import machine_line

    ctr, llm = results.get("ctr", {}), results.get("llm", {})
    lines, change = ctr_table(ctr)
    if ctr:
        print(f"\n## CTR: recent-K vs retrieved-K history (K={ctr['history_len']}, "
              f"{ctr['seeds']} seeds, test AUC mean ± std, tune={ctr['tune']})\n")  # fmt: skip
        print("\n".join(lines))
        spent = ", ".join(
            f"{k}: features {v['features']:.0f} s, all {v['total']:.0f} s"
            for k, v in ctr["seconds"].items()
        )
        print(f"\nseconds ({spent}); retrieved's features include embedding the item texts "
              "(once; then read from the project's vector cache)")  # fmt: skip
    if llm:
        model = next(iter(llm.values()))["model"]
        print(f"\n## LLM ranker ({model}, P(yes) from the answer logits)\n")
        print("\n".join(llm_table(llm)))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nmachine: {machine_line()}; load average {load}\ncommand: {command}")
    auc = {s: llm.get(s, {}).get("auc", math.nan) for s in SELECTIONS}
    print(f"rella_retrieved_vs_recent_din: {change.get('din', math.nan):+.2f}% "
          f"llm_ranker_auc_recent: {auc['recent']:.4f} "
          f"llm_ranker_auc_retrieved: {auc['retrieved']:.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    parser.add_argument("--work", type=Path, default=REPO / ".kar-bench-rella")
    parser.add_argument("--ml100k", type=Path, default=ML100K, help="MovieLens 100K folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backbones", default="din,deepfm", help="comma-separated")
    parser.add_argument("--history-len", type=int, default=20, help="K of the CTR models")
    parser.add_argument("--tune", action="store_true", help="pick each config on validation")
    parser.add_argument("--max-epochs", type=int, help="cap the CTR epochs (smoke runs)")
    parser.add_argument("--rank-rows", type=int, default=1000, help="sampled test rows")
    parser.add_argument("--rank-history", type=int, default=10, help="K of the LLM prompts")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"unknown part(s) {unknown}; expected {PARTS}")

    import torch

    from kar.pipeline import load_data

    torch.set_num_threads(args.threads)
    project = movielens_project(args.work / "ml-100k", args.ml100k.resolve(), args.history_len)
    data = load_data(project)
    results_file = args.work / "rella_results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if "ctr" in parts:
        backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
        ctr = run_ctr(project, data, backbones, args.seeds, args.tune, args.max_epochs)
        results["ctr"] = {**ctr, "history_len": args.history_len, "seeds": args.seeds,
                          "tune": args.tune}  # fmt: skip
    for part in parts:
        if part.startswith("llm-"):
            selection = part.removeprefix("llm-")
            results.setdefault("llm", {})[selection] = run_llm(
                project, data, selection, args.rank_rows, args.rank_history, args.batch_size
            )
    results_file.write_text(json.dumps(results, indent=1))
    report(results, "OMP_NUM_THREADS=1 python benchmarks/rella.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
