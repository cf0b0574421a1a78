"""Next-item retrieval with LLM / encoder item embeddings on MovieLens-100K (issues 23, 35).

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
- a shuffled control: the tuned vectors permuted across items;
- SAID (kar.embedding.said: ID -> soft tokens of the frozen SmolLM2, trained to regenerate
  each item's text) vectors with the mean of history and with the user tower;
- SASRec (kar.embedding.sasrec, ID only; hyper-parameters searched on valid one axis at a
  time) and text-SASRec: the same model and hyper-parameters, each item's embedding a
  learned projection of its frozen text vector (MiniLM, SmolLM2, SAID) plus an ID row for
  warm items only (randomly dropped in training), so cold items are scored by their text;
  with a control on MiniLM vectors shuffled across items. Seeds: mean ± std.

Also: the tuned item vectors published to Feast (PostgreSQL + pgvector) and i2i queries
through ``retrieve_online_documents_v2``, checked against an exact numpy search.

    .venv/bin/python benchmarks/embeddings.py [--data ../shared/data/ml-100k]
    .venv/bin/python benchmarks/embeddings.py --only sasrec --no-llm --no-said  # SASRec rows
    .venv/bin/python benchmarks/embeddings.py --quick --no-llm --no-feast  # ~3 min smoke

The table lists every row that ran, and a part that could not run as skipped with its
reason; if a part raises, the rows so far are still printed (marked INCOMPLETE) before the
error. SAID resumes from / saves to ``--work``/said.ckpt (trained there when absent or
unfinished: ~3.5 min an epoch here); ``--said-steps`` (set by ``--quick``) trains a few
steps from scratch in a checkpoint of its own instead.

Parts (``--only a,b`` runs those; ``--no-PART`` skips one): als, raw, tune (+ shuffled
control), tower, said, sasrec, feast; ``--no-llm`` drops every SmolLM2 row.

Last lines: ``recall10_tuned_vs_id: X.XX cold_recall10: X.XX`` = Recall@10 of the tuned
embeddings (mean of history) over ALS's, and their Recall@10 on the cold slice; then
``best_text_vs_sasrec_r10: X.XX cold_recall10: X.XX`` = test Recall@10 of the text / LLM
method with the best valid Recall@10 over SASRec's (ID), and its cold Recall@10.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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


PARTS = ("als", "raw", "tune", "tower", "said", "sasrec", "feast")
# --quick: one seed, a few epochs, no SASRec search, SAID for a few steps (a smoke run that
# exercises every row, not a result)
QUICK: dict[str, Any] = {
    "tune_epochs": 1,
    "tune_seeds": 1,
    "tower_epochs": 1,
    "tower_samples": 2000,
    "sasrec_epochs": 2,
    "sasrec_seeds": 1,
    "sasrec_other_seeds": 1,
    "sasrec_grid": "none",
    "said_steps": 12,
}
OPTIONAL = ("als", "tune", "tower", "said", "sasrec")  # parts with their own --no-PART flag


def parse_args() -> argparse.Namespace:
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
    for part in OPTIONAL:
        parser.add_argument(f"--no-{part}", action="store_true", help=f"skip the {part} rows")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated parts to run, of {', '.join(PARTS)} (popularity always runs)",
    )
    parser.add_argument("--sasrec-epochs", type=int, default=200, help="most epochs per run")
    parser.add_argument(
        "--sasrec-seeds", type=int, default=3, help="seeds of SASRec and text-SASRec (MiniLM)"
    )
    parser.add_argument(
        "--sasrec-other-seeds",
        type=int,
        default=1,
        help="seeds of text-SASRec on SmolLM2 / SAID vectors and of its shuffled control",
    )
    parser.add_argument(
        "--sasrec-grid",
        choices=("search", "none"),
        default="search",
        help="search: one axis at a time on valid (see ID_AXES, text_axes); none: the base",
    )
    parser.add_argument("--said-epochs", type=int, default=None, help="SAIDConfig default if unset")
    parser.add_argument(
        "--said-steps",
        type=int,
        default=None,
        help="smoke: train SAID for at most this many steps from scratch, in a checkpoint of "
        "its own (the full run's said.ckpt is neither read nor written)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (~3 min with --no-llm --no-feast): "
        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
        + "; flags given explicitly win",
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".kar-bench" / "embeddings")
    args = parser.parse_args()
    unknown = {p for p in args.only.split(",") if p} - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part(s) {sorted(unknown)}; parts are {', '.join(PARTS)}")
    if args.quick:  # reduced settings where the flag was left at its default
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


@dataclass
class Row:
    """One table row: test metrics (all events, cold slice) and its validation R@10."""

    name: str
    notes: str
    test: ev.Metrics
    cold: ev.Metrics
    kind: str  # "id", "text" (a text / LLM method) or "control"
    valid_r10: float


@dataclass
class Bench:
    """The split, its events, training sequences, and the rows measured so far."""

    args: argparse.Namespace
    clock: Clock
    split: Any
    ids: list[str]
    texts: dict[str, str]
    valid: ev.Events
    test: ev.Events
    sequences: list[np.ndarray]
    rows: dict[str, Row] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # row name -> why it did not run

    @property
    def item_list(self) -> list[str]:
        return [self.texts[i] for i in self.ids]

    def on(self, part: str) -> bool:
        only = {p for p in self.args.only.split(",") if p}
        return (not only or part in only) and not getattr(self.args, f"no_{part}", False)

    def valid_r10(self, scorer: ev.Scorer) -> float:
        return ev.evaluate(self.valid, scorer)[0].recall10

    def report(
        self,
        key: str,
        name: str,
        scorer: ev.Scorer,
        kind: str,
        notes: str = "",
        valid_r10: float | None = None,
    ) -> None:
        """Evaluate ``scorer`` on test (once) and add its row."""
        test, cold = ev.evaluate(self.test, scorer)
        valid = self.valid_r10(scorer) if valid_r10 is None else valid_r10
        self.add(key, Row(name, notes, test, cold, kind, valid))

    def add(self, key: str, row: Row) -> None:
        if key in self.rows:
            raise ValueError(f"row {key!r} registered twice")
        self.rows[key] = row
        print(
            f"  {row.name}: valid R@10 {row.valid_r10:.4f}, test R@10 {row.test.recall10:.4f}, "
            f"cold R@10 {row.cold.recall10:.4f}",
            flush=True,
        )

    def skip(self, name: str, why: str) -> None:
        """A row that did not run: printed in the table with its reason."""
        self.skipped[name] = why
        print(f"  {name}: skipped ({why})", flush=True)


def load_bench(args: argparse.Namespace, clock: Clock) -> Bench:
    from kar.data.movielens import load_movielens
    from kar.data.split import make_time_split
    from kar.embedding.cooccur import training_interactions
    from kar.embedding.stage import user_sequences
    from kar.embedding.text import item_texts

    with clock("load + split + events"):
        ds = load_movielens(args.data)
        split = make_time_split(ds)
        texts = item_texts(ds.items)
        ids = sorted(texts)
        index = {item: k for k, item in enumerate(ids)}
        sequences = user_sequences(training_interactions(split), index)[1]
        bench = Bench(
            args,
            clock,
            split,
            ids,
            texts,
            ev.next_item_events(split, ids, "valid"),
            ev.next_item_events(split, ids, "test"),
            sequences,
        )
    test = bench.test
    print(
        f"ML-100K: {len(ids)} items; valid {len(bench.valid)} events, test {len(test)} events "
        f"({int(test.cold.sum())} cold: {len(set(test.targets[test.cold]))} items without "
        f"training interactions); history N = {args.history}",
        flush=True,
    )
    return bench


def mean_row(
    name: str, notes: str, runs: list[tuple[ev.Metrics, ev.Metrics]], kind: str, valid: float
) -> Row:
    """The mean over seeds of each metric; ``notes`` gets the R@10 spreads appended."""

    def mean(part: int) -> ev.Metrics:
        ms = [run[part] for run in runs]
        return ev.Metrics(
            float(np.mean([m.recall10 for m in ms])),
            float(np.mean([m.recall50 for m in ms])),
            float(np.mean([m.ndcg10 for m in ms])),
            ms[0].n,
        )

    r10 = np.array([run[0].recall10 for run in runs])
    cold10 = np.array([run[1].recall10 for run in runs])
    spread = f"{len(runs)} seeds: R@10 ±{r10.std():.4f}, cold R@10 ±{cold10.std():.4f}"
    return Row(name, f"{notes}; {spread}" if notes else spread, mean(0), mean(1), kind, valid)


def id_part(b: Bench) -> None:
    """Popularity (always) and implicit's ALS with a small grid on valid."""
    b.report("pop", "popularity (training counts)", ev.popularity_scorer(b.split, b.ids), "id")
    if not b.on("als"):
        return
    with b.clock("ALS grid"):
        grid = [(f, r) for f in (32, 64, 128) for r in (0.05, 1.0)]
        if b.args.quick:
            grid = [(64, 0.05)]
        scores = {g: b.valid_r10(ev.als_scorer(b.split, b.ids, g[0], g[1])) for g in grid}
        best = max(grid, key=lambda g: scores[g])
        b.report(
            "als",
            "(a) ID only: implicit ALS",
            ev.als_scorer(b.split, b.ids, *best),
            "id",
            f"factors {best[0]}, reg {best[1]}",
            scores[best],
        )


def embed_part(b: Bench, models: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Raw text vectors of each model; their mean-of-history rows when ``raw`` is on."""
    from kar.embedding.embedder import ItemEmbedder

    raw: dict[str, np.ndarray] = {}
    for key, label in models:
        with b.clock(f"embed {key}"):
            raw[key] = ItemEmbedder(key).embed(b.item_list)
        if b.on("raw"):
            scorer = ev.mean_history_scorer(raw[key], b.args.history)
            b.report(f"raw_{key}", f"(b) raw {label}", scorer, "text")
    return raw


def tune_part(
    b: Bench, models: list[tuple[str, str]], raw: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """NoteLLM-style contrastive tuning (3 seeds, epoch on valid); the best seed's vectors."""
    import torch

    from kar.embedding.cooccur import cooccurrence_pairs
    from kar.embedding.embedder import ItemEmbedder
    from kar.embedding.tune import TuneConfig, load_tuned, tune_embeddings

    args = b.args
    pairs = cooccurrence_pairs(b.split, window=10, top_k=10)
    print(f"co-occurrence pairs (training time only): {pairs.height}", flush=True)
    tuned: dict[str, np.ndarray] = {}
    for key, label in models:
        runs, valids, best_vectors, best_valid = [], [], None, -1.0
        with b.clock(f"tune {key} ({args.tune_seeds} seeds)"):
            for seed in range(args.tune_seeds):
                out = args.work / f"tuned_{key}_s{seed}_{uuid.uuid4().hex[:6]}"
                result = tune_embeddings(
                    ItemEmbedder(key),
                    b.texts,
                    pairs,
                    out,
                    TuneConfig(method="mlp", epochs=args.tune_epochs, batch_size=256, seed=seed),
                    evaluate=lambda fn: b.valid_r10(
                        ev.mean_history_scorer(fn(b.item_list), args.history)
                    ),
                    progress=False,
                    base_vectors=raw[key],
                )
                vectors = load_tuned(out).head(torch.from_numpy(raw[key])).detach()
                vectors = torch.nn.functional.normalize(vectors, dim=1).numpy()
                runs.append(ev.evaluate(b.test, ev.mean_history_scorer(vectors, args.history)))
                valids.append(result.scores[result.best_epoch])
                if valids[-1] > best_valid:
                    best_valid, best_vectors = valids[-1], vectors
        b.add(f"tuned_{key}", mean_row(f"(c) tuned {label}", "", runs, "text", np.mean(valids)))
        assert best_vectors is not None
        tuned[key] = best_vectors
    perm = np.random.default_rng(0).permutation(len(b.ids))
    b.report(
        "shuffled",
        "control: tuned MiniLM vectors shuffled across items",
        ev.mean_history_scorer(tuned["minilm"][perm], args.history),
        "control",
    )
    return tuned


def tower_row(b: Bench, key: str, name: str, vectors: np.ndarray) -> None:
    """The HLLM-style user tower over ``vectors`` instead of the mean of history."""
    from kar.embedding.tower import TowerConfig, train_user_tower

    args = b.args
    with b.clock(f"user tower ({key})"):
        tower = train_user_tower(
            vectors,
            b.sequences,
            b.valid.warm_items,
            TowerConfig(
                max_len=args.history, epochs=args.tower_epochs, samples_per_epoch=args.tower_samples
            ),
            evaluate=lambda t: b.valid_r10(ev.user_vector_scorer(t.item_vectors, t.user_vectors)),
            progress=False,
        )
    b.report(
        key,
        name,
        ev.user_vector_scorer(tower.item_vectors, tower.user_vectors),
        "text",
        f"best epoch {tower.best_epoch + 1}/{args.tower_epochs}, "
        f"{args.tower_samples or 'all'} samples/epoch",
        max(h["score"] for h in tower.history),
    )


def said_part(b: Bench) -> np.ndarray | None:
    """SAID item vectors (the frozen LLM regenerates each item's text from k soft tokens)
    with the mean of history and with the user tower; None when SAID is not available."""
    args = b.args
    try:
        from kar.embedding.said import SAIDConfig, fit_said
    except ImportError as exc:  # e.g. torch / transformers missing
        b.skip("(e) SAID", f"kar.embedding.said not importable: {exc}")
        return None
    config = SAIDConfig()
    if args.said_epochs is not None:
        config = replace(config, epochs=args.said_epochs)
    checkpoint = args.work / "said.ckpt"
    if args.said_steps is not None:  # smoke: a checkpoint of its own, started afresh
        checkpoint = args.work / "said_smoke.ckpt"
        checkpoint.unlink(missing_ok=True)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with b.clock("SAID"):
        result = fit_said(
            b.item_list, config, checkpoint, progress=False, stop_after_steps=args.said_steps
        )
    vectors = result.vectors
    print(
        f"SAID: {result.epochs_done} epoch(s), {result.steps} steps done (resumed at "
        f"{result.resumed_from}); loss per epoch {[round(x, 3) for x in result.losses]}; "
        f"{result.seconds:.0f} s this call",
        flush=True,
    )
    trained = f"{config.epochs} epochs"
    if result.epochs_done < config.epochs:
        trained = f"smoke: {result.steps} steps"
    label = f"SAID (SmolLM2, {config.soft_tokens} soft tokens, {trained})"
    b.report("said", f"(e) {label}", ev.mean_history_scorer(vectors, args.history), "text")
    if b.on("tower"):
        tower_row(b, "said_tower", f"(e) {label} + user tower", vectors)
    return vectors


# SASRec: max_len 50 (the last 50 items; 25 and 200 were no better on valid), lr 2e-3; the
# search moves one axis at a time from the first value of each
SASREC_BASE = {"max_len": 50, "hidden": 64, "blocks": 2, "dropout": 0.5, "lr": 2e-3}
ID_AXES: list[tuple[str, list[Any]]] = [
    ("dropout", [0.5, 0.4]),
    ("hidden", [64, 128]),
    ("blocks", [2, 1]),
]


def text_axes(cfg: Any) -> list[tuple[str, list[Any]]]:
    """text-SASRec's own search from the ID model's choice: the text regularises, so less
    dropout; and whether items with few training interactions keep an ID row."""
    return [("dropout", [cfg.dropout, round(cfg.dropout - 0.1, 2)]), ("id_min_count", [1, 10])]


def sasrec_search(
    b: Bench, base: Any, axes: list[tuple[str, list[Any]]], text: np.ndarray | None = None
) -> tuple[Any, Any]:
    """(config, model) of the best valid R@10 found moving one axis at a time, each value
    tried with the best of the axes before it."""
    from kar.embedding.sasrec import sasrec_scorer, train_sasrec

    tried: dict[Any, tuple[Any, float]] = {}

    def run(cfg: Any) -> float:
        if cfg not in tried:
            model = train_sasrec(
                b.sequences,
                len(b.ids),
                cfg,
                text_vectors=text,
                evaluate=lambda m: b.valid_r10(sasrec_scorer(m)),
            )
            tried[cfg] = (model, max(h["score"] for h in model.history))
            print(f"  search: {sasrec_notes(cfg)} -> valid R@10 {tried[cfg][1]:.4f}", flush=True)
        return tried[cfg][1]

    best = base
    run(best)
    for name, values in axes if b.args.sasrec_grid == "search" else []:
        for value in values:
            candidate = replace(best, **{name: value})
            if run(candidate) > run(best):
                best = candidate
    return best, tried[best][0]


def sasrec_notes(cfg: Any) -> str:
    notes = (
        f"last {cfg.max_len}, hidden {cfg.hidden}, {cfg.blocks} blocks, "
        f"dropout {cfg.dropout}, lr {cfg.lr:g}"
    )
    if cfg.items == "text+id":
        notes += f", ID dropout {cfg.id_dropout}, ID rows for items with >= {cfg.id_min_count}"
    return notes


def sasrec_row(
    b: Bench,
    key: str,
    name: str,
    cfg: Any,
    seeds: int,
    text: np.ndarray | None = None,
    first: Any = None,
) -> None:
    """Train ``cfg`` with ``seeds`` seeds (``first``: seed 0, already trained) and add the
    mean row (a control when the name says so)."""
    from kar.embedding.sasrec import sasrec_scorer, train_sasrec

    runs, valids, epochs = [], [], []
    with b.clock(f"SASRec {key} ({seeds} seeds)"):
        for seed in range(seeds):
            model = first if seed == 0 and first is not None else None
            if model is None:
                model = train_sasrec(
                    b.sequences,
                    len(b.ids),
                    replace(cfg, seed=seed),
                    text_vectors=text,
                    evaluate=lambda m: b.valid_r10(sasrec_scorer(m)),
                )
            runs.append(ev.evaluate(b.test, sasrec_scorer(model)))
            valids.append(max(h["score"] for h in model.history))
            epochs.append(model.best_epoch)
    kind = "control" if name.startswith("control") else "text" if text is not None else "id"
    notes = f"{sasrec_notes(cfg)}; best epochs {epochs}"
    b.add(key, mean_row(name, notes, runs, kind, float(np.mean(valids))))


def sasrec_part(b: Bench, text_inputs: list[tuple[str, str, np.ndarray]]) -> None:
    """SASRec on IDs (searched on valid), then text-SASRec (a projection of the text vectors
    plus an ID row for warm items) searched from the ID model's choice on MiniLM, and run
    with that choice on the other text vectors; a control on shuffled MiniLM vectors."""
    from kar.embedding.sasrec import SASRecConfig

    args = b.args
    base = SASRecConfig(epochs=args.sasrec_epochs, eval_every=5, patience=3, **SASREC_BASE)
    with b.clock("SASRec search (ID)"):
        cfg, model = sasrec_search(b, base, ID_AXES)
    sasrec_row(b, "sasrec", "(f) SASRec (ID)", cfg, args.sasrec_seeds, first=model)
    vectors = {key: v for key, _, v in text_inputs}
    text_cfg = replace(cfg, items="text+id", id_dropout=0.3)
    first = None
    if "minilm" in vectors:
        with b.clock("SASRec search (text+ID, MiniLM)"):
            text_cfg, first = sasrec_search(b, text_cfg, text_axes(cfg), vectors["minilm"])
    for key, label, text in text_inputs:
        seeds = args.sasrec_seeds if key == "minilm" else args.sasrec_other_seeds
        name = f"(f) text-SASRec on {label}"
        model = first if key == "minilm" else None
        sasrec_row(b, f"sasrec_{key}", name, text_cfg, seeds, text, first=model)
    if "minilm" in vectors:
        perm = np.random.default_rng(0).permutation(len(b.ids))
        name = "control: text-SASRec on MiniLM vectors shuffled across items"
        shuffled = vectors["minilm"][perm]
        sasrec_row(b, "sasrec_shuffled", name, text_cfg, args.sasrec_other_seeds, shuffled)


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    clock = Clock()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch threads 1", flush=True)
    b = load_bench(args, clock)
    feast_line, stopped = "", None
    try:
        feast_line = run_parts(b)
    except BaseException as exc:  # the table still shows every row that ran, then it re-raises
        stopped = exc
        raise
    finally:
        print_table(b, feast_line, time.perf_counter() - started, stopped)


def run_parts(b: Bench) -> str:
    """Every part in order, each adding its rows to ``b``; the Feast line (or "")."""
    args = b.args
    id_part(b)
    models = [("minilm", "all-MiniLM-L6-v2, mean pooling")]
    if not args.no_llm:
        models.append(("smollm2", "SmolLM2-135M, [ITEM] token"))
    raw: dict[str, np.ndarray] = {}
    if any(b.on(p) for p in ("raw", "tune", "tower", "sasrec")):
        raw = embed_part(b, models)
    tuned = tune_part(b, models, raw) if b.on("tune") else {}
    if b.on("tower"):
        if "minilm" in tuned:
            tower_row(b, "tower", "(d) tuned MiniLM + user tower", tuned["minilm"])
        if not args.no_raw_tower:
            tower_row(b, "tower_raw", "(d) raw MiniLM + user tower", raw["minilm"])
    said_vectors = said_part(b) if b.on("said") else None
    if b.on("sasrec"):
        inputs = [(key, label.split(",")[0], raw[key]) for key, label in models]
        if said_vectors is not None:
            inputs.append(("said", "SAID vectors", said_vectors))
        sasrec_part(b, inputs)
    if b.on("feast") and not args.no_feast and "minilm" in tuned:
        return feast_check(args.work, b.ids, b.texts, tuned["minilm"], b.clock)
    return ""


def print_table(
    b: Bench, feast_line: str, total: float, stopped: BaseException | None = None
) -> None:
    """The markdown table of every row registered in ``b`` (and the skipped ones), the wall
    times and the summary lines; ``stopped``: the exception that ended the run early."""
    if stopped is not None:
        print(f"\nINCOMPLETE: stopped by {type(stopped).__name__}: {stopped}", flush=True)
    columns = ["method", "notes", "R@10", "R@50", "NDCG@10", "events"]
    columns += ["cold R@10", "cold R@50", "cold NDCG@10", "cold n"]
    print("\n| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in b.rows.values():
        a, c = row.test.row(), row.cold.row()
        print(
            f"| {row.name} | {row.notes} | {a[0]} | {a[1]} | {a[2]} | {a[3]} | "
            f"{c[0]} | {c[1]} | {c[2]} | {c[3]} |"
        )
    for name, why in b.skipped.items():
        print(f"| {name} | skipped: {why} |" + " - |" * (len(columns) - 2))
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in b.clock.steps.items())
    print(f"\nwall time per step: {steps}")
    if feast_line:
        print(feast_line)
    print(f"total wall time {total:.0f} s on {cpu_name()} ({os.cpu_count()} cores, shared)")
    print(summary_lines(b.rows))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "nan"


def summary_lines(rows: dict[str, Row]) -> str:
    """The last two lines: tuned MiniLM vs ALS (issue 23), then the best text / LLM method
    (by valid R@10) vs SASRec (ID); nan where a row did not run."""
    als, tuned = rows.get("als"), rows.get("tuned_minilm")
    old = "recall10_tuned_vs_id: nan cold_recall10: nan"
    if als is not None and tuned is not None:
        old = (
            f"recall10_tuned_vs_id: {ratio(tuned.test.recall10, als.test.recall10)} "
            f"cold_recall10: {tuned.cold.recall10:.2f}"
        )
    texts = [row for row in rows.values() if row.kind == "text"]
    sasrec = rows.get("sasrec")
    new = "best_text_vs_sasrec_r10: nan cold_recall10: nan"
    lines = []
    if texts:
        best = max(texts, key=lambda row: row.valid_r10)
        lines.append(
            f"best text / LLM method by valid R@10: {best.name} (valid {best.valid_r10:.4f}, "
            f"test R@10 {best.test.recall10:.4f}, cold R@10 {best.cold.recall10:.4f})"
        )
        if sasrec is not None:
            new = (
                f"best_text_vs_sasrec_r10: {ratio(best.test.recall10, sasrec.test.recall10)} "
                f"cold_recall10: {best.cold.recall10:.2f}"
            )
    return "\n".join([*lines, old, new])


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
