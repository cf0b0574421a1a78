"""Relaxed speculative decoding's effect on AUC: the pipeline on MovieLens-100K, 3 ways.

    python benchmarks/relaxed_auc.py --pool /tmp/bench/pool/ml-100k --work /tmp/bench/auc
        [--stage setup|plain|relaxed|evaluate|all] [--kinds user_preference,item_fact]
        [--backbones deepfm,din] [--seeds 3] [--shard I/N]

``--pool`` is a project whose knowledge store holds plain greedy answers of the same model
and dtype (e.g. ``benchmarks/movielens.py --backend vllm --generate-only``). From its
settings this script makes three projects under ``--work``:

- ``pool``: a copy of the pool's store, its answers taken as they are (another engine's
  plain greedy: the reference for how much an engine's numerics alone move AUC);
- ``plain``: the transformers backend, plain greedy (``generate``) at ``--plain-batch``;
- ``relaxed``: the transformers backend, relaxed speculative decoding at
  ``--relaxed-batch``, drafting only from OTHER entities' pool answers
  (``exclude_own_answer``).

With ``--pool-is-plain`` (the pool made by ``benchmarks/movielens.py --backend transformers
--generate-only`` at the plain batch: the very answers ``plain`` would make) ``plain`` keeps
the pool's answers and ``pool`` is left out.

``plain`` and ``relaxed`` regenerate the ``--kinds`` answers (1 torch thread each: the two
stages can run at the same time, after ``setup``); other kinds keep the pool's answers in
all three. ``evaluate`` runs encode, train, publish and evaluate on each with the same
backbones and seeds, and prints per backbone the mean test AUC; last,
``relaxed_auc_change: X.XXXX`` (relaxed minus plain, the largest over the backbones,
signed). The runs without knowledge are trained once, in ``plain``, and reused by the
others (they see the same data). Every stage resumes from what is stored. ``--shard I/N``
makes a generation stage answer only every N-th prompt from the I-th (0-based): N
processes with I = 0 .. N-1, after ``setup``, share one stage (the store takes concurrent
writers; the draft pool is read once, from the plain answers, so it is the same in every
shard).
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--pool", type=Path, required=True, help="project with earlier answers")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench/auc"))
    parser.add_argument(
        "--stage",
        default="all",
        choices=["all", "setup", "plain", "relaxed", "evaluate"],
        help="setup: only create the two projects (run it first when the generation stages "
        "run in parallel)",
    )
    parser.add_argument(
        "--kinds",
        default="user_preference,item_fact",
        help="knowledge kinds regenerated (the others keep the pool's plain answers in both)",
    )
    parser.add_argument(
        "--pool-is-plain",
        action="store_true",
        help="the pool holds the transformers backend's plain answers at --plain-batch: "
        "plain takes them as they are, and the pool project is left out",
    )
    parser.add_argument("--backbones", default="deepfm,din")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plain-batch", type=int, default=32)
    parser.add_argument("--relaxed-batch", type=int, default=16)
    parser.add_argument(
        "--step-token-budget",
        type=int,
        default=48,
        help="relaxed: tokens per verification pass (48 at batch 16: 2-token drafts; the "
        "default budget of 16 would decode a batch of 16 plainly)",
    )
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--min-prob", type=float, default=0.1)
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=(0, 1),
        help="I/N: a generation stage answers prompts I, I+N, I+2N, ... (0-based)",
    )
    args = parser.parse_args()

    from kar.generation.factory import backend_model_name
    from kar.pipeline import answer_prompts, build_prompts, load_data

    names = ("plain", "relaxed") if args.pool_is_plain else ("pool", "plain", "relaxed")
    projects = {name: make_project(args, name) for name in names}
    print(
        f"machine: {platform.node()} ({os.cpu_count()} cores, {platform.machine()}); "
        + "; ".join(
            f"{name}: {backend_model_name(p.settings.generation)} at batch "
            f"{p.settings.generation.batch_size} in {p.root}"
            for name, p in projects.items()
        ),
        flush=True,
    )
    kinds = set(args.kinds.split(","))
    for name in ("plain", "relaxed"):
        if args.stage in ("all", name):
            started = time.perf_counter()
            project = projects[name]
            dataset, split = load_data(project)
            prompts = [p for p in build_prompts(project, dataset, split) if p.kind in kinds]
            shard, shards = args.shard
            prompts = prompts[shard::shards]
            reports = answer_prompts(project, prompts, progress=False)
            for kind, report in reports.items():
                print(f"{name} generation, {kind}: {report.summary()}", flush=True)
            print(f"{name} generation: {time.perf_counter() - started:.0f} s", flush=True)
    if args.stage in ("all", "evaluate"):
        evaluate(projects)


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` as (I, N), with 0 <= I < N."""
    try:
        shard, shards = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N")
    return shard, shards


def make_project(args: argparse.Namespace, name: str):  # noqa: ANN201 (kar.project.ProjectFolder)
    """The ``pool``, ``plain`` or ``relaxed`` project under ``--work`` (made on first use)."""
    from kar.features import init_feature_repo
    from kar.generation.store import copy_sqlite_store
    from kar.project import CONFIG_FILE, ProjectFolder

    pool = ProjectFolder.load(args.pool)
    root = args.work / name
    if not (root / CONFIG_FILE).exists():
        root.mkdir(parents=True, exist_ok=True)
        source = Path(pool.knowledge_store_url.removeprefix("sqlite:///"))
        target = copy_sqlite_store(source, root / source.relative_to(pool.root))
        if name == "plain" and not args.pool_is_plain:
            # the regenerated kinds start empty; the others stay the pool's
            with sqlite3.connect(target) as conn:
                kinds = args.kinds.split(",")
                marks = ",".join("?" * len(kinds))
                conn.execute(f"DELETE FROM knowledge WHERE kind IN ({marks})", kinds)
    settings = pool.settings.model_copy(deep=True)
    gen = settings.generation
    gen.backend = "transformers"
    gen.threads = 1
    gen.speculative.mode = "relaxed" if name == "relaxed" else "off"
    gen.speculative.top_k = args.top_k
    gen.speculative.min_prob = args.min_prob
    gen.speculative.exclude_own_answer = True
    gen.speculative.step_token_budget = args.step_token_budget
    gen.batch_size = args.relaxed_batch if name == "relaxed" else args.plain_batch
    settings.training.eval_backbones = args.backbones.split(",")
    settings.training.eval_seeds = list(range(args.seeds))
    project = ProjectFolder(root, settings)
    if not project.feature_repo.exists():
        init_feature_repo(project.feature_repo, project=settings.features.project)
    project.save()
    return project


def paired_differences(plain, relaxed) -> dict[str, str]:  # noqa: ANN001 (ProjectFolder)
    """Per backbone, relaxed minus plain test AUC of the same seed (with knowledge), from
    each project's last ``results.csv``: "mean ± sd (min, max), standard error"."""
    import polars as pl

    def runs(project) -> pl.DataFrame:  # noqa: ANN001
        frame = pl.read_csv(project.reports_dir / "results.csv")
        return frame.filter(pl.col("arm") == "knowledge").select("backbone", "seed", "test_auc")

    joined = runs(relaxed).join(runs(plain), on=["backbone", "seed"], suffix="_plain")
    diffs = joined.with_columns(diff=pl.col("test_auc") - pl.col("test_auc_plain"))
    out = {}
    for (backbone,), group in diffs.group_by("backbone", maintain_order=True):
        d = group["diff"]
        sd = d.std() if d.len() > 1 else 0.0
        out[backbone] = (
            f"{d.mean():+.4f} ± {sd:.4f} ({d.min():+.4f}, {d.max():+.4f}), "
            f"se {sd / d.len() ** 0.5:.4f}, {d.len()} seeds"
        )
    return out


def share_runs_without_knowledge(source, target) -> int:  # noqa: ANN001 (ProjectFolder)
    """Append ``source``'s logged runs without knowledge to ``target``'s run log, so its
    evaluation reuses them (they train on the same data: the logs' fingerprints say so)
    instead of training them again. Returns how many lines were appended."""
    import json

    runs = "evaluate_runs.jsonl"
    source_log, target_log = source.reports_dir / runs, target.reports_dir / runs
    if not source_log.exists():
        return 0
    have = set()
    if target_log.exists():
        have = set(target_log.read_text(encoding="utf-8").splitlines())
    lines = []
    for line in source_log.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # cut short by a kill
        if isinstance(row, dict) and row.get("arm") == "none" and line not in have:
            lines.append(line + "\n")
    target_log.parent.mkdir(parents=True, exist_ok=True)
    with target_log.open("a", encoding="utf-8") as fh:
        fh.writelines(lines)
    return len(lines)


def evaluate(projects: dict) -> None:
    """Encode, train, publish and evaluate each project; answer agreement, AUC table."""
    from kar.generation import KnowledgeStore
    from kar.generation.factory import backend_model_name
    from kar.pipeline import run_encode, run_evaluate, run_publish, run_train

    texts = {}
    for name, project in projects.items():
        store = KnowledgeStore(project.knowledge_store_url)
        answers = store.answers(scenario=project.settings.scenario)
        store.close()
        by_model = dict(answers.group_by("model").len().sort("model").iter_rows())
        print(f"{name}: answers encoded, by model: {by_model}")
        texts[name] = {
            (row["kind"], row["entity_id"]): row["answer"] for row in answers.iter_rows(named=True)
        }
    for other in [name for name in ("relaxed", "pool") if name in texts]:
        for kind in sorted({k for k, _ in texts["plain"]}):
            keys = [key for key in texts["plain"] if key[0] == kind and key in texts[other]]
            same = sum(texts["plain"][key] == texts[other][key] for key in keys)
            print(f"{kind}: {same} of {len(keys)} {other} answers equal the plain answer")
    print(f"relaxed model id: {backend_model_name(projects['relaxed'].settings.generation)}")

    summaries = {}
    for name, project in projects.items():
        started = time.perf_counter()
        if name != "plain":
            share_runs_without_knowledge(projects["plain"], project)
        run_encode(project, progress=False)
        run_train(project, progress=False)
        run_publish(project)
        summary, _, _ = run_evaluate(project, progress=False)
        summaries[name] = summary
        print(f"{name}: encode/train/publish/evaluate {time.perf_counter() - started:.0f} s")

    def auc(name: str, backbone: str, knowledge: bool = True) -> tuple[float, float]:
        frame = summaries[name]
        arm = "knowledge" if knowledge else "none"
        row = frame.filter((frame["arm"] == arm) & (frame["backbone"] == backbone))
        return float(row["auc_mean"][0]), float(row["auc_std"][0])

    paired = paired_differences(projects["plain"], projects["relaxed"])
    with_pool = "pool" in summaries
    header = (
        "| backbone | AUC without knowledge | plain knowledge | relaxed | relaxed - plain | "
        "paired per-seed difference: mean ± sd (min, max), standard error, seeds |"
    )
    rule = "| --- | --- | --- | --- | --- | --- |"
    if with_pool:
        header += " pool's plain (other engine) | pool - plain |"
        rule += " --- | --- |"
    print(header)
    print(rule)
    changes = []
    plain = summaries["plain"]
    for backbone in plain.filter(plain["arm"] == "knowledge")["backbone"].to_list():
        (p, p_sd), (r, r_sd) = (auc(n, backbone) for n in ("plain", "relaxed"))
        changes.append(r - p)
        line = (
            f"| {backbone} | {auc('plain', backbone, knowledge=False)[0]:.4f} | "
            f"{p:.4f} ± {p_sd:.4f} | {r:.4f} ± {r_sd:.4f} | {r - p:+.4f} | "
            f"{paired.get(backbone, '–')} |"
        )
        if with_pool:
            o, o_sd = auc("pool", backbone)
            line += f" {o:.4f} ± {o_sd:.4f} | {o - p:+.4f} |"
        print(line)
    print(f"mean_auc_change: {sum(changes) / len(changes):+.4f}")
    print(f"relaxed_auc_change: {max(changes, key=abs):+.4f}")


if __name__ == "__main__":
    main()
