"""Next-item retrieval with LLM / encoder item embeddings on MovieLens-100K (issue 23).

Time split of kar.data.split (history + train = training time, valid picks epochs and
hyper-parameters, test is read once). An event is one test interaction with an item the
user had not seen; its query is everything the user did before it; candidates are all
1,682 items minus those already seen. Rows:

- popularity (the trivial baseline) and implicit's ALS (ID only; grid on valid): both give
  no score to items without training interactions (cold), so they never retrieve them;
- raw text embeddings, user = mean of the last 20 history embeddings: all-MiniLM-L6-v2
  (mean pooling) and SmolLM2-135M (last hidden state at an appended [ITEM] token);
- after NoteLLM-style contrastive tuning on training-time co-occurring pairs (a residual
  MLP head over the frozen model, 3 seeds: mean ± std; the epoch picked on valid);
- the same tuned vectors read by the HLLM-style user tower (2 transformer layers over the
  last 20 items, next-item InfoNCE) instead of the mean of history;
- a shuffled control: the tuned vectors permuted across items.

Also: the tuned item vectors published to Feast (PostgreSQL + pgvector) and i2i queries
through ``retrieve_online_documents_v2``, checked against an exact numpy search.

    .venv/bin/python benchmarks/embeddings.py [--data ../shared/data/ml-100k]

Last line: ``recall10_tuned_vs_id: X.XX cold_recall10: X.XX`` = Recall@10 of the tuned
embeddings (mean of history) over ALS's, and their Recall@10 on the cold slice.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's ALS asks for it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kar.embedding import evaluate as ev  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields.get("Model name", "unknown CPU").strip()


class Clock:
    """Wall time of each named step."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}

    def __call__(self, name: str):
        clock = self

        class _Step:
            def __enter__(self) -> None:
                self.start = time.perf_counter()

            def __exit__(self, *exc: object) -> None:
                clock.steps[name] = clock.steps.get(name, 0.0) + time.perf_counter() - self.start
                print(f"  [{name}: {clock.steps[name]:.1f} s]", flush=True)

        return _Step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--tune-epochs", type=int, default=6)
    parser.add_argument("--tune-seeds", type=int, default=3)
    parser.add_argument("--tower-epochs", type=int, default=4)
    parser.add_argument(
        "--tower-samples",
        type=int,
        default=20000,
        help="next-item samples per tower epoch (0: all, about 83k)",
    )
    parser.add_argument("--history", type=int, default=20, help="last N items read per query")
    parser.add_argument("--no-llm", action="store_true", help="skip the SmolLM2 rows")
    parser.add_argument("--no-feast", action="store_true", help="skip the Feast / pgvector part")
    parser.add_argument("--no-raw-tower", action="store_true", help="tower on tuned vectors only")
    parser.add_argument("--work", type=Path, default=ROOT / ".kar-bench" / "embeddings")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from kar.data.movielens import load_movielens
    from kar.data.split import make_time_split
    from kar.embedding.cooccur import cooccurrence_pairs, training_interactions
    from kar.embedding.embedder import ItemEmbedder
    from kar.embedding.text import item_texts
    from kar.embedding.tower import TowerConfig, train_user_tower
    from kar.embedding.tune import TuneConfig, load_tuned, tune_embeddings

    started = time.perf_counter()
    clock = Clock()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch threads 1", flush=True)
    with clock("load + split + events"):
        ds = load_movielens(args.data)
        split = make_time_split(ds)
        texts = item_texts(ds.items)
        ids = sorted(texts)
        item_list = [texts[i] for i in ids]
        valid = ev.next_item_events(split, ids, "valid")
        test = ev.next_item_events(split, ids, "test")
        index = {item: k for k, item in enumerate(ids)}
        train = training_interactions(split)
        sequences = [
            np.array([index[i] for i in g["item_id"].to_list()])
            for _, g in train.group_by("user_id", maintain_order=True)
        ]
    print(
        f"ML-100K: {len(ids)} items; valid {len(valid)} events, test {len(test)} events "
        f"({int(test.cold.sum())} cold: {len(set(test.targets[test.cold]))} items without "
        f"training interactions); history N = {args.history}",
        flush=True,
    )
    rows: list[tuple[str, str, ev.Metrics, ev.Metrics]] = []
    results: dict[str, tuple[ev.Metrics, ev.Metrics]] = {}

    def report(key: str, name: str, scorer: ev.Scorer, extra: str = "") -> None:
        all_m, cold_m = ev.evaluate(test, scorer)
        rows.append((name, extra, all_m, cold_m))
        results[key] = (all_m, cold_m)
        print(f"  {name}: test R@10 {all_m.recall10:.4f}, cold R@10 {cold_m.recall10:.4f}")

    def valid_r10(scorer: ev.Scorer) -> float:
        return ev.evaluate(valid, scorer)[0].recall10

    # (a) ID only
    with clock("popularity + ALS grid"):
        report("pop", "popularity (training counts)", ev.popularity_scorer(split, ids))
        grid = [(f, r) for f in (32, 64, 128) for r in (0.05, 1.0)]
        scores = {g: valid_r10(ev.als_scorer(split, ids, g[0], g[1])) for g in grid}
        best = max(grid, key=lambda g: scores[g])
        report(
            "als",
            "(a) ID only: implicit ALS",
            ev.als_scorer(split, ids, *best),
            f"factors {best[0]}, reg {best[1]} (valid R@10 {scores[best]:.4f})",
        )

    # (b) raw text embeddings
    raw: dict[str, np.ndarray] = {}
    models = [("minilm", "all-MiniLM-L6-v2, mean pooling")]
    if not args.no_llm:
        models.append(("smollm2", "SmolLM2-135M, [ITEM] token"))
    for key, label in models:
        with clock(f"embed {key}"):
            raw[key] = ItemEmbedder(key).embed(item_list)
        report(f"raw_{key}", f"(b) raw {label}", ev.mean_history_scorer(raw[key], args.history))

    # (c) contrastive tuning: residual MLP head over the frozen model, epoch on valid
    pairs = cooccurrence_pairs(split, window=10, top_k=10)
    print(f"co-occurrence pairs (training time only): {pairs.height}", flush=True)
    tuned: dict[str, np.ndarray] = {}
    for key, label in models:
        seed_metrics, best_vectors, best_valid = [], None, -1.0
        with clock(f"tune {key} ({args.tune_seeds} seeds)"):
            for seed in range(args.tune_seeds):
                out = args.work / f"tuned_{key}_s{seed}_{uuid.uuid4().hex[:6]}"
                result = tune_embeddings(
                    ItemEmbedder(key),
                    texts,
                    pairs,
                    out,
                    TuneConfig(method="mlp", epochs=args.tune_epochs, batch_size=256, seed=seed),
                    evaluate=lambda fn: valid_r10(
                        ev.mean_history_scorer(fn(item_list), args.history)
                    ),
                    progress=False,
                    base_vectors=raw[key],
                )
                embedder = load_tuned(out)
                vectors = embedder.head(torch.from_numpy(raw[key])).detach()
                vectors = torch.nn.functional.normalize(vectors, dim=1).numpy()
                seed_metrics.append(
                    ev.evaluate(test, ev.mean_history_scorer(vectors, args.history))
                )
                if result.scores[result.best_epoch] > best_valid:
                    best_valid, best_vectors = result.scores[result.best_epoch], vectors
        r10 = np.array([m[0].recall10 for m in seed_metrics])
        cold10 = np.array([m[1].recall10 for m in seed_metrics])
        mean_all = ev.Metrics(
            float(r10.mean()),
            float(np.mean([m[0].recall50 for m in seed_metrics])),
            float(np.mean([m[0].ndcg10 for m in seed_metrics])),
            seed_metrics[0][0].n,
        )
        mean_cold = ev.Metrics(
            float(cold10.mean()),
            float(np.mean([m[1].recall50 for m in seed_metrics])),
            float(np.mean([m[1].ndcg10 for m in seed_metrics])),
            seed_metrics[0][1].n,
        )
        name = f"(c) tuned {label}"
        spread = f"{args.tune_seeds} seeds: R@10 ±{r10.std():.4f}, cold R@10 ±{cold10.std():.4f}"
        rows.append((name, spread, mean_all, mean_cold))
        results[f"tuned_{key}"] = (mean_all, mean_cold)
        print(f"  {name}: test R@10 {r10.mean():.4f} ± {r10.std():.4f}", flush=True)
        assert best_vectors is not None
        tuned[key] = best_vectors

    perm = np.random.default_rng(0).permutation(len(ids))
    report(
        "shuffled",
        "control: tuned MiniLM vectors shuffled across items",
        ev.mean_history_scorer(tuned["minilm"][perm], args.history),
    )

    # (d) user tower vs mean of history: on the tuned MiniLM vectors (and on the raw ones)
    towers = [("tower", "tuned", tuned["minilm"])]
    if not args.no_raw_tower:
        towers.append(("tower_raw", "raw", raw["minilm"]))
    for key, label, vectors in towers:
        with clock(f"user tower ({label})"):
            tower = train_user_tower(
                vectors,
                sequences,
                valid.warm_items,
                TowerConfig(
                    max_len=args.history,
                    epochs=args.tower_epochs,
                    samples_per_epoch=args.tower_samples,
                ),
                evaluate=lambda t: valid_r10(ev.user_vector_scorer(t.item_vectors, t.user_vectors)),
                progress=False,
            )
        report(
            key,
            f"(d) {label} MiniLM + user tower",
            ev.user_vector_scorer(tower.item_vectors, tower.user_vectors),
            f"best epoch {tower.best_epoch + 1}/{args.tower_epochs}, "
            f"{args.tower_samples or 'all'} samples/epoch",
        )

    feast_line = ""
    if not args.no_feast:
        feast_line = feast_check(args.work, ids, texts, tuned["minilm"], clock)

    total = time.perf_counter() - started
    head = "| method | notes | R@10 | R@50 | NDCG@10 | events | cold R@10 | cold R@50 | cold n |"
    print("\n" + head)
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, extra, all_m, cold_m in rows:
        a, c = all_m.row(), cold_m.row()
        print(
            f"| {name} | {extra} | {a[0]} | {a[1]} | {a[2]} | {a[3]} | {c[0]} | {c[1]} | {c[3]} |"
        )
    print("\nwall time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in clock.steps.items()))
    if feast_line:
        print(feast_line)
    print(f"total wall time {total:.0f} s on {cpu_name()} ({os.cpu_count()} cores, shared)")
    als, tuned_m = results["als"][0].recall10, results["tuned_minilm"]
    ratio = tuned_m[0].recall10 / als if als > 0 else float("nan")
    print(f"recall10_tuned_vs_id: {ratio:.2f} cold_recall10: {tuned_m[1].recall10:.2f}")


def feast_check(
    work: Path, ids: list[str], texts: dict[str, str], vectors: np.ndarray, clock: Clock
) -> str:
    """Publish to Feast on pgvector; i2i through retrieve_online_documents_v2 vs numpy."""
    import polars as pl

    from kar.embedding.feast_repo import (
        init_embedding_repo,
        open_store,
        publish_embeddings,
        similar_items,
    )
    from kar.errors import FeatureStoreError

    repo = work / f"feast_{uuid.uuid4().hex[:8]}"
    try:
        init_embedding_repo(repo, f"kar_bench_{repo.name[6:]}", vectors.shape[1])
    except FeatureStoreError as exc:
        return f"Feast / pgvector: skipped ({exc})"
    try:
        with clock("feast publish"):
            report = publish_embeddings(
                repo,
                items=pl.DataFrame({"entity_id": ids, "vector": vectors.tolist()}),
                texts=texts,
            )
        queries = np.random.default_rng(1).choice(len(ids), 50, replace=False)
        agree, seconds = [], []
        for q in queries:
            t0 = time.perf_counter()
            hits = similar_items(repo, ids[q], k=10)
            seconds.append(time.perf_counter() - t0)
            exact = np.argsort(-(vectors @ vectors[q]), kind="stable")
            exact = [ids[i] for i in exact if i != q][:10]
            agree.append(len({h.entity_id for h in hits} & set(exact)) / 10)
        return (
            f"Feast (PostgreSQL + pgvector, exact scan): published {report.items} item vectors in "
            f"{report.seconds:.1f} s; 50 i2i queries (get_online_features + "
            f"retrieve_online_documents_v2): median {1000 * np.median(seconds):.0f} ms, top-10 "
            f"overlap with exact numpy search {100 * np.mean(agree):.1f}%"
        )
    finally:
        try:
            store = open_store(repo)
            store.provider.teardown_infra(store.project, store.list_feature_views(), [])
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"teardown failed: {exc}")


if __name__ == "__main__":
    main()
