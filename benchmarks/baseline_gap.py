"""Every backbone without knowledge against the trivial `baseline_lr`, on a MovieLens time
split or the demo: do the CTR inputs (labelled behaviour history, point-in-time counters,
regularisation) let each backbone at least match the baseline?

    python benchmarks/baseline_gap.py --dataset ml-1m [--backbones all] [--seeds 1] [--tune]

No LLM is involved (the knowledge arms are in benchmarks/movielens.py). Prints the table,
the machine, and last `backbones_above_baseline: N/M min_gap: +X.XXXX`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = {
    "ml-100k": REPO.parent / "shared" / "data" / "ml-100k",
    "ml-1m": REPO.parent / "shared" / "data" / "ml-1m",  # users 1-2999, with timestamps
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-100k", choices=[*DATA, "demo"])
    parser.add_argument("--data", type=Path, help="dataset folder (default ../shared/data/...)")
    parser.add_argument("--backbones", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--tune", action="store_true", help="choose lr / embedding decay on valid")
    args = parser.parse_args()

    from machine import machine_line

    from kar.data import load_demo, load_movielens, make_time_split, write_demo_dataset
    from kar.models.harness import compare
    from kar.models.inputs import CTRFeatures
    from kar.models.registry import available_models
    from kar.models.report import markdown_table, summarize
    from kar.models.runlog import BASELINE

    backbones = available_models() if args.backbones == "all" else args.backbones.split(",")
    started = time.perf_counter()
    if args.dataset == "demo":
        folder = args.data or Path("/tmp/kar-baseline-gap-demo")
        write_demo_dataset(folder)
        dataset = load_demo(folder)
        config = {"batch_size": 128}
    else:
        folder = (args.data or DATA[args.dataset]).resolve()
        if not folder.exists():
            sys.exit(f"MovieLens data not found at {folder}: pass --data")
        dataset = load_movielens(folder, variant=args.dataset)
        config = {}
    split = make_time_split(dataset)  # kar's defaults: KAR's protocol
    features = CTRFeatures.build(dataset, split, history_len=20)
    results = compare(
        features,
        backbones,
        tuple(range(args.seeds)),
        model_config=config,
        progress=False,
        tune=args.tune,
        arms=("none",),
    )
    summary = summarize(results)
    seconds = time.perf_counter() - started
    print(markdown_table(summary))
    rows = summary.filter(summary["backbone"] != BASELINE)
    gaps = rows["auc_vs_baseline"]
    print(
        f"\n{args.dataset}: {split.train.height:,} train / {split.valid.height:,} valid / "
        f"{split.test.height:,} test rows; {len(backbones)} backbones x {args.seeds} seeds"
        f"{' (tuned on validation)' if args.tune else ' (defaults)'}; {seconds:.0f} s"
    )
    print(f"machine: {machine_line()}, torch threads 1")
    print(
        f"backbones_above_baseline: {int((gaps >= 0).sum())}/{rows.height} "
        f"min_gap: {float(gaps.min()):+.4f}"
    )


if __name__ == "__main__":
    main()
