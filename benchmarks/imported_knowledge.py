"""Imported knowledge benchmark: informative texts through `kar knowledge import`, then the
evaluation (none / knowledge / shuffled control, cold-start slices, beside the baseline).

    python benchmarks/imported_knowledge.py [--datasets demo,ml-100k[,ml-1m]] [--seeds 3]
        [--backbones deepfm,din] [--work DIR] [--ml100k PATH] [--standardize]

--standardize is a DIAGNOSTIC of the learning side: the encoded vectors are z-scored per
dimension (over the entities of each kind) before the evaluation; kar never publishes that.

No LLM is asked anything. The texts, written by `kar.data.texts`:
- demo: item knowledge = each film's HIDDEN traits in words (tone, acclaim, era, pace):
  an ORACLE, the information the simulation hides; what knowledge can do when it is right.
- ml-100k (and ml-1m, its users 1-2999 subset): item knowledge = the dataset's own genres
  and year in words (honest: nothing outside MovieLens; the CTR model already sees genres
  and year as ids).
- users: their public attribute columns in words (demo: age group, gender; MovieLens:
  age, gender, occupation), stored with their history before their as-of instant,
  as an LLM user answer is. Item texts are imported with --no-context (the sentences name
  title / genres / decade themselves; without the title line the vector is about them).
Each project is built in --work, the texts imported with the `kar knowledge import`
command, encoded with the bundled MiniLM, and evaluated with `kar.pipeline.run_evaluate`.
Prints each table, the headline line, the CPU and the exact command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
ML100K = REPO.parent / "shared" / "data" / "ml-100k"
ML1M = REPO.parent / "shared" / "data" / "ml-1m"  # ratings of users 1-2999 (found inside)


def kar_cli(*args: str) -> str:
    """Run the `kar` command (this interpreter's kar.cli) and return what it printed."""
    cmd = [sys.executable, "-m", "kar.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip()


def demo_project(root: Path):
    """`kar init` a demo project; texts: the oracle item traits, the users' columns."""
    from kar.data.texts import demo_oracle_texts, user_fact_texts, write_texts
    from kar.pipeline import load_data
    from kar.project import CONFIG_FILE, ProjectFolder

    if not (root / CONFIG_FILE).exists():
        kar_cli("init", str(root))
    project = ProjectFolder.load(root)
    dataset, _ = load_data(project)
    items = write_texts(demo_oracle_texts(dataset.items.height), root / "data/oracle_items.csv")
    users = write_texts(
        user_fact_texts(dataset.users, ["age_group", "gender"]), root / "data/user_facts.csv"
    )
    return project, [(items, "demo-oracle", False), (users, "user-facts", True)]


def movielens_project(root: Path, data: Path, name: str = "ml-100k"):
    """A MovieLens project; texts: genres and year in words, the users' columns."""
    from kar.data.texts import item_fact_texts, user_fact_texts, write_texts
    from kar.pipeline import load_data
    from kar.project import CONFIG_FILE, ProjectFolder, ProjectSettings

    if not (root / CONFIG_FILE).exists():
        root.mkdir(parents=True, exist_ok=True)
        settings = ProjectSettings(name=f"{name}-imported", scenario="movies")
        settings.dataset.kind = "movielens"
        settings.dataset.path = str(data)
        ProjectFolder(root, settings).save()
    project = ProjectFolder.load(root)
    dataset, _ = load_data(project)
    items = write_texts(item_fact_texts(dataset.items, "movie"), root / "item_facts.csv")
    users = write_texts(
        user_fact_texts(dataset.users, ["age", "gender", "occupation"]), root / "user_facts.csv"
    )
    return project, [(items, "ml-facts", False), (users, "user-facts", True)]


def standardize(vectors) -> None:
    """DIAGNOSTIC (--standardize): z-score each dimension over the entities of each kind,
    in place. MiniLM vectors are unit-norm (per-dimension std ~0.02); this shows how much
    of the knowledge the learning side misses at that scale. Not what kar publishes."""
    import numpy as np

    from kar.encoding.vectors import vectors_frame
    from kar.vectors import vector_matrix

    for kind in ("users", "items"):
        ids, matrix = vector_matrix(getattr(vectors, kind), kind)
        matrix = (matrix - matrix.mean(0)) / (matrix.std(0) + 1e-6)
        setattr(vectors, kind, vectors_frame(ids, matrix.astype(np.float32)))


def run(name: str, project, files, backbones: list[str], seeds: int, z_score: bool = False) -> dict:
    """Import (CLI), encode, evaluate one project; its table and headline."""
    from kar.models.report import headline_line
    from kar.pipeline import run_encode, run_evaluate

    timings = {}
    start = time.perf_counter()
    for path, source, context in files:
        flag = "--context" if context else "--no-context"
        print(
            kar_cli("knowledge", "import", str(path), "-p", str(project.root), "-s", source, flag)
        )
    timings["import_s"] = time.perf_counter() - start
    start = time.perf_counter()
    vectors = run_encode(project, progress=False)
    if z_score:
        standardize(vectors)
        vectors.save(project.encoded_dir)
    timings["encode_s"] = time.perf_counter() - start
    project.settings.training.eval_backbones = backbones
    project.settings.training.eval_seeds = list(range(seeds))
    project.save()
    start = time.perf_counter()
    report = run_evaluate(project, progress=False)
    timings["evaluate_s"] = time.perf_counter() - start
    return {
        "name": name,
        "vectors": f"{vectors.users.height} users, {vectors.items.height} items, dim {vectors.dim}",
        "markdown": report.markdown.read_text(),
        "headline": headline_line(report.summary),
        "timings": timings,
    }


def main() -> None:
    from machine import machine_line

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--datasets", default="demo,ml-100k", help="demo, ml-100k, ml-1m")
    parser.add_argument("--work", type=Path, default=REPO / ".kar-bench-imported")
    parser.add_argument("--ml100k", type=Path, default=ML100K, help="MovieLens 100K folder")
    parser.add_argument("--ml1m", type=Path, default=ML1M, help="MovieLens 1M folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backbones", default="deepfm,din", help="comma-separated")
    parser.add_argument(
        "--standardize",
        action="store_true",
        help="DIAGNOSTIC: z-score the encoded vectors per dimension before evaluating",
    )
    args = parser.parse_args()
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    results = []
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if name == "demo":
            project, files = demo_project(args.work / "demo")
        elif name in ("ml-100k", "ml-1m"):
            data = args.ml100k if name == "ml-100k" else args.ml1m
            project, files = movielens_project(args.work / name, data, name)
        else:
            raise SystemExit(f"unknown dataset {name!r}: use demo, ml-100k and/or ml-1m")
        results.append(run(name, project, files, backbones, args.seeds, args.standardize))
    command = "python benchmarks/imported_knowledge.py " + " ".join(sys.argv[1:])
    for r in results:
        z = ", vectors z-scored per dimension (diagnostic)" if args.standardize else ""
        print(f"\n## {r['name']} ({r['vectors']}{z})\n")
        print(r["markdown"])
        t = r["timings"]
        print(
            f"import {t['import_s']:.0f} s, encode {t['encode_s']:.0f} s, "
            f"evaluate {t['evaluate_s']:.0f} s"
        )
        print(f"{r['name']}: {r['headline']}")
    print(f"\nmachine: {machine_line()}\ncommand: {command.strip()}")


if __name__ == "__main__":
    main()
