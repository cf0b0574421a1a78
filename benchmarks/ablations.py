"""Ablations of KAR's knowledge path: adaptor type, knowledge kinds, experts, pooling, codes.

On a kar project with generated + encoded knowledge (e.g. the MovieLens benchmark folder):

    python benchmarks/ablations.py --project .kar-bench/ml-100k [--pooling last] [--seeds 3]

(``--pooling last`` re-encodes the stored answers with last-token pooling for the pooling
rows; vectors are cached.) Without a project, a quick run on a real ML-100K slice with
random knowledge vectors (no LLM), which checks the harness and measures its cost:

    python benchmarks/ablations.py --ml100k ../shared/data/ml-100k --users 300

Prints the table, how it ran, and writes a section of docs/benchmarks.md (--out).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def project_features(root: Path, other_pooling: str | None):
    """CTRFeatures of a project (raw encodings) and {pooling: (users, items)} alternatives."""
    from kar.encoding import EntityVectors, TextEncoder, VectorCache, encode_knowledge
    from kar.generation import KnowledgeStore
    from kar.pipeline import ctr_features, load_data
    from kar.project import ProjectFolder

    project = ProjectFolder.load(root)
    dataset, split = load_data(project)
    features = ctr_features(project, dataset, split, with_knowledge=True)
    enc = project.settings.encoding
    base = EntityVectors.load(project.encoded_dir)
    encodings = {enc.pooling: (base.users, base.items)}
    if other_pooling and other_pooling != enc.pooling:
        answers = KnowledgeStore(project.knowledge_store_url).answers(
            scenario=project.settings.scenario
        )
        encoder = TextEncoder(
            enc.model,
            pooling=other_pooling,
            max_length=enc.max_length,
            batch_size=enc.batch_size,
            cache=VectorCache(project.vector_cache_path),
        )
        alt = encode_knowledge(answers, encoder, on_duplicate="last", progress=True)
        encodings[other_pooling] = (alt.users, alt.items)
    return features, encodings, f"project {project.root.name}"


def slice_features(path: Path, n_users: int, dim: int):
    """A real ML-100K slice (first n users) with random knowledge vectors."""
    import polars as pl

    from kar.data import load_movielens, make_time_split
    from kar.data.schema import Dataset
    from kar.models.inputs import CTRFeatures
    from kar.models.toydata import random_knowledge

    ds = load_movielens(path)
    keep = ds.users["user_id"].head(n_users)
    inter = ds.interactions.filter(pl.col("user_id").is_in(keep.implode()))
    ds = Dataset(ds.name, inter, ds.items, ds.users.filter(pl.col("user_id").is_in(keep.implode())))
    split = make_time_split(ds)
    users = random_knowledge(keep.to_list(), dim, seed=0)
    items = random_knowledge(ds.items["item_id"].to_list(), dim, seed=1)
    features = CTRFeatures.build(ds, split, knowledge_users=users, knowledge_items=items)
    alt = (
        random_knowledge(keep.to_list(), dim, 2),
        random_knowledge(ds.items["item_id"].to_list(), dim, 3),
    )
    return (
        features,
        {"mean": (users, items), "last (random stand-in)": alt},
        (
            f"ML-100K slice: first {n_users} users, "
            f"{features.arrays['train']['label'].size} train rows, "
            f"random {dim}-d knowledge (no LLM)"
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--project", type=Path, help="kar project folder with encoded knowledge")
    src.add_argument("--ml100k", type=Path, help="ML-100K folder: slice + random knowledge")
    parser.add_argument("--users", type=int, default=300, help="--ml100k: users in the slice")
    parser.add_argument("--dim", type=int, default=384, help="--ml100k: random knowledge dim")
    parser.add_argument("--pooling", default="last", help="--project: the other pooling to compare")
    parser.add_argument("--backbone", default="deepfm")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--epochs", type=int, default=20, help="max epochs (early stopping on valid)"
    )
    parser.add_argument("--codes", type=int, default=64, help="codebook size of the codes row")
    parser.add_argument(
        "--groups", default="adaptor,kinds,experts,pooling,codes", help="comma-separated groups"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()

    import torch
    from movielens import write_section

    from kar.models.ablations import ablate, ablation_markdown, ablation_table, default_variants

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.project:
        features, encodings, what = project_features(args.project, args.pooling)
    else:
        features, encodings, what = slice_features(args.ml100k, args.users, args.dim)
    build_s = time.perf_counter() - t0
    groups = tuple(g for g in args.groups.split(",") if g)
    variants = default_variants(groups, encodings=encodings, codebook_size=args.codes)
    t1 = time.perf_counter()
    rows = ablate(
        features,
        args.backbone,
        variants,
        seeds=tuple(range(args.seeds)),
        model_config={"max_epochs": args.epochs},
    )
    train_s = time.perf_counter() - t1
    table = ablation_markdown(ablation_table(rows))
    argv = " ".join(sys.argv[1:])
    how = (
        f"{platform.node()} ({os.cpu_count()} cores shared), Python {platform.python_version()}, "
        f"torch threads 1; {what}; backbone {args.backbone}; seeds {args.seeds}; "
        f"features {build_s:.1f} s, training {train_s:.0f} s"
    )
    section = "\n".join(
        [
            f"## Ablations ({'project' if args.project else 'ML-100K slice, random knowledge'})",
            "",
            f"Command: `python benchmarks/ablations.py {argv}`  ",
            f"How: {how}.",
            "",
            table,
            "",
            "Test AUC of the restored best-validation epoch; relative gain vs the same backbone "
            "without knowledge. A gain smaller than the seed std is noise.",
            "",
        ]
    )
    print(section)
    if str(args.out):
        heading = f"## Ablations ({'project' if args.project else 'ML-100K slice'}"
        write_section(args.out, heading, section)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
