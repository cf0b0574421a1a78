"""Does useless knowledge cost anything? The same project evaluated with and without the
warm start (knowledge models starting from the same seed's no-knowledge model), side by side.

    python benchmarks/no_harm.py PROJECT_DIR [--backbones deepfm,din | all] [--seeds 3]

PROJECT_DIR is a kar project with encoded knowledge (e.g. after `kar quickstart`). Prints,
per setting, the table of every arm (none / knowledge / shuffled) and the mean relative AUC
change of the shuffled control and of the knowledge arm over no knowledge, then the machine.
Nothing is written into the project (the runs are not logged).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("project", type=Path)
    parser.add_argument("--backbones", default="deepfm,din", help="comma-separated, or 'all'")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    from machine import machine_line

    from kar.models.harness import compare
    from kar.models.registry import available_models
    from kar.models.report import headline, summarize
    from kar.models.report import markdown_table as table
    from kar.pipeline import adaptor_config, ctr_features, load_data
    from kar.project import ProjectFolder

    project = ProjectFolder.load(args.project)
    backbones = available_models() if args.backbones == "all" else args.backbones.split(",")
    dataset, split = load_data(project)
    features = ctr_features(project, dataset, split, with_knowledge=True)
    tr = project.settings.training
    figures = {}
    for warm in (False, True):
        started = time.perf_counter()
        results = compare(
            features,
            backbones,
            tuple(range(args.seeds)),
            adaptor_config(project),
            progress=False,
            tune=tr.tune,
            model_configs={b: tr.backbone_config(b) for b in backbones},
            warm_start=warm,
        )
        summary = summarize(results)
        h = headline(summary)
        figures[warm] = h
        seconds = time.perf_counter() - started
        print(f"\n### warm start {'on' if warm else 'off'} ({seconds:.0f} s)\n")
        print(table(summary))
        print(
            f"\nshuffled mean rel. AUC change: {100 * h['shuffled_mean_rel_auc_gain']:+.2f}%, "
            f"knowledge: {100 * h['mean_rel_auc_gain']:+.2f}% "
            f"(over no knowledge, {len(backbones)} backbones x {args.seeds} seeds)"
        )
    print(f"\nproject: {project.root} ({project.settings.name}); machine: {machine_line()}")
    print(
        f"shuffled_off: {100 * figures[False]['shuffled_mean_rel_auc_gain']:.2f}% "
        f"shuffled_on: {100 * figures[True]['shuffled_mean_rel_auc_gain']:.2f}% "
        f"knowledge_off: {100 * figures[False]['mean_rel_auc_gain']:.2f}% "
        f"knowledge_on: {100 * figures[True]['mean_rel_auc_gain']:.2f}%"
    )


if __name__ == "__main__":
    main()
