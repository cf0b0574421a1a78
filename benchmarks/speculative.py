"""Speculative decoding from a knowledge pool vs plain greedy, on MovieLens-100K prompts.

    python benchmarks/speculative.py [--prompts 64] [--max-new-tokens 0] [--batch-sizes 1,16]
        [--pool-db STORE] [--step-token-budget 16,48] [--refresh-new 3]
        [--draft-shapes tree:15:1,chain:8:2] [--relaxed 3:0.1,2:0.3]
        [--dtype bfloat16 --reference-dtype float32] [--cpu-kernels off]
        [--reference-default-kernels]

Builds ``--prompts`` user-preference and ``--prompts`` item-fact prompts (kar.prompts on
kar.data's MovieLens-100K), and a pool of earlier answers for OTHER users and items: read
from ``--pool-db`` (a knowledge store, opened through an SQLite backup copy, never
written), topped up to ``--pool-min`` answers per kind by plain greedy generation for
other entities (not timed). Then, in one process on one loaded model, at each batch size:
plain greedy (``TransformersBackend.generate``), exact and relaxed speculative decoding on
the same prompts (at batch > 1 once per ``--step-token-budget``; at batch 1 once per
``--draft-shapes`` entry, SHAPE:DRAFT_TOKENS:MIN_SUPPORT with SHAPE tree (several
continuations in one pass) or chain (one draft)). Then the refresh rows:
batch 1, user prompts, with each target user's previous answer (made before their last
``--refresh-new`` rated films) added to the pool. ``--relaxed`` lists relaxed acceptance
settings (top_k:min_prob): the first runs everywhere, the others once each at batch 1.
``--reference-dtype`` times plain greedy on a second copy of the model in that dtype too
(with ``--reference-default-kernels``: on PyTorch's default CPU kernels, not kar's prepacked
ones; ``--cpu-kernels off`` runs the main model on PyTorch's defaults).
Prints tokens/s, forward passes, mean accepted draft length and how many outputs equal
plain greedy; last, for batch 1, ``speedup_relaxed`` then ``speedup_exact`` (the pool of
other entities only).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ml-100k"
# earlier answers of the same scenario: benchmarks/movielens.py --generate-only's store
DEFAULT_POOL = REPO / ".kar-bench" / "ml-100k" / "artifacts" / "knowledge.db"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--pool-db", type=Path, default=DEFAULT_POOL, help="SQLite knowledge store (read only)"
    )
    parser.add_argument(
        "--pool-min", type=int, default=64, help="answers per kind in the pool (top-up)"
    )
    parser.add_argument(
        "--pool-max", type=int, default=0, help="most pooled answers per kind (0: all)"
    )
    parser.add_argument(
        "--prompts", type=int, default=64, help="user prompts and item prompts, each"
    )
    parser.add_argument(
        "--pool-cache",
        type=Path,
        default=REPO / ".kar-cache" / "speculative-pool.db",
        help="knowledge store for the top-up answers (reused by later runs)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=0,
        help="token budget of every answer (0: the scenario's, per kind, as the pipeline runs)",
    )
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--draft-shapes",
        default="tree:5:1",
        help="SHAPE:DRAFT_TOKENS:MIN_SUPPORT, comma-separated (SHAPE: tree or chain): the "
        "first runs everywhere, the others once more each at batch 1",
    )
    parser.add_argument(
        "--step-token-budget",
        default="16",
        help="tokens per verification pass; comma-separated values run each at batch > 1",
    )
    parser.add_argument("--min-share", type=float, default=0.5)
    parser.add_argument(
        "--refresh-new",
        type=int,
        default=3,
        help="refresh rows (batch 1, users): each target user's previous answer, made before "
        "their last N rated films, joins the pool (0: skip)",
    )
    parser.add_argument(
        "--relaxed",
        default="3:0.1",
        help="relaxed acceptance as TOP_K:MIN_PROB, comma-separated: the first runs in every "
        "variant (speedup_relaxed), the others once more at batch 1 on the first variant",
    )
    parser.add_argument(
        "--reference-dtype",
        choices=["float32", "bfloat16"],
        help="also time plain greedy at batch 1 on a second copy of the model in this dtype, "
        "and print each batch-1 row's speedup against it (e.g. bf16 drafting vs fp32 plain)",
    )
    parser.add_argument(
        "--reference-default-kernels",
        action="store_true",
        help="the --reference-dtype model runs on PyTorch's default CPU kernels "
        "(TransformersBackend(cpu_kernels=False)): kar's CPU kernels vs none, side by side",
    )
    parser.add_argument(
        "--cpu-kernels",
        choices=["on", "off"],
        default="on",
        help="the main model's CPU kernels (kar.generation.cpu_kernels): on (default) or "
        "PyTorch's defaults",
    )
    args = parser.parse_args()
    try:
        relaxed_settings = [
            (int(k), float(p)) for k, p in (item.split(":") for item in args.relaxed.split(","))
        ]
    except ValueError:
        parser.error(f"--relaxed: TOP_K:MIN_PROB[,TOP_K:MIN_PROB...], got {args.relaxed!r}")
    try:
        shapes = [
            (shape, int(tokens), int(support))
            for shape, tokens, support in (item.split(":") for item in args.draft_shapes.split(","))
        ]
        assert all(shape in ("tree", "chain") for shape, _, _ in shapes)
    except (ValueError, AssertionError):
        parser.error(
            "--draft-shapes: SHAPE:DRAFT_TOKENS:MIN_SUPPORT[,...] with SHAPE tree or chain, "
            f"got {args.draft_shapes!r}"
        )

    import torch

    from kar.data import load_movielens, make_time_split
    from kar.generation import KnowledgeStore, generate_knowledge
    from kar.generation.speculative import (
        SpeculativeConfig,
        SpeculativeStats,
        SpeculativeTransformersBackend,
    )
    from kar.generation.store import copy_sqlite_store
    from kar.prompts import Scenario, build_item_prompts, build_user_prompts
    from kar.records import KIND_ITEM, KIND_USER

    torch.set_num_threads(1)
    if not (args.data / "u.data").exists():
        sys.exit(f"MovieLens-100K not found at {args.data}: pass --data")
    ds = load_movielens(args.data, variant="ml-100k")
    split = make_time_split(ds)
    scenario = Scenario.load("movies")

    budgets = [int(b) for b in args.step_token_budget.split(",")]

    def spec_config(
        mode: str,
        budget: int,
        relaxed: tuple[int, float] = relaxed_settings[0],
        shape: tuple[str, int, int] = shapes[0],
    ) -> SpeculativeConfig:
        return SpeculativeConfig(
            mode=mode,  # type: ignore[arg-type]
            draft_tree=shape[0] == "tree",
            draft_tokens=shape[1],
            min_support=shape[2],
            min_share=args.min_share,
            step_token_budget=budget,
            top_k=relaxed[0],
            min_prob=relaxed[1],
        )

    backend = SpeculativeTransformersBackend(config=spec_config("exact", budgets[0]),
                                             dtype=args.dtype,
                                             cpu_kernels=args.cpu_kernels == "on")  # fmt: skip
    pool = backend.make_pool()
    budget_override = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    params = {k: scenario.sampling_params(k, **budget_override) for k in (KIND_USER, KIND_ITEM)}

    # the pool: answers of other entities from the store copy ...
    pooled: dict[str, list[str]] = {KIND_USER: [], KIND_ITEM: []}
    # the timed prompts: the first --prompts users and items by id; never in the pool
    user_ids = sorted(set(ds.interactions["user_id"].to_list()), key=int)
    item_ids = sorted(set(ds.items["item_id"].to_list()), key=int)
    targets = {KIND_USER: user_ids[: args.prompts], KIND_ITEM: item_ids[: args.prompts]}
    prompts = {
        KIND_USER: build_user_prompts(ds, scenario, split.as_of, user_ids=targets[KIND_USER]),
        KIND_ITEM: build_item_prompts(ds, scenario, item_ids=targets[KIND_ITEM]),
    }
    # a store of another dataset (e.g. MovieLens-1M) may hold the same films: never pool
    # an answer about a target film (same title), which would be its own answer
    target_films = {p.context_text.split(" (")[0].lower() for p in prompts[KIND_ITEM]}
    if args.pool_db and args.pool_db.exists():
        with tempfile.TemporaryDirectory() as tmp:
            copy = copy_sqlite_store(args.pool_db, Path(tmp) / "pool.db")
            store = KnowledgeStore(f"sqlite:///{copy}")
            frame = store.answers(scenario=scenario.name)
            store.close()
        skipped_films = 0
        for row in frame.iter_rows(named=True):
            kind = row["kind"]
            if kind not in pooled or row["entity_id"] in targets[kind]:
                continue
            if kind == KIND_ITEM and row["context_text"].split(" (")[0].lower() in target_films:
                skipped_films += 1
                continue
            if args.pool_max and len(pooled[kind]) >= args.pool_max:
                continue
            pooled[kind].append(row["entity_id"])
            ended = row["finish_reason"] in ("stop", "trimmed")
            pool.add(row["scenario"], kind, row["entity_id"], row["answer"], ended)
        print(f"pool from {args.pool_db}: {skipped_films} answers about target films left out")
    # ... topped up by plain greedy answers for yet other entities (not timed)
    plain_generate = super(SpeculativeTransformersBackend, backend).generate
    plain = SimpleNamespace(model_name=backend.model_name, generate=plain_generate)
    args.pool_cache.parent.mkdir(parents=True, exist_ok=True)
    for kind, ids in ((KIND_USER, user_ids), (KIND_ITEM, item_ids)):
        need = args.pool_min - len(pooled[kind])
        if need <= 0:
            continue
        taken = set(pooled[kind]) | set(targets[kind])
        extra = [e for e in reversed(ids) if e not in taken][:need]
        extra_prompts = (
            build_user_prompts(ds, scenario, split.as_of, user_ids=extra)
            if kind == KIND_USER
            else build_item_prompts(ds, scenario, item_ids=extra)
        )
        started = time.perf_counter()
        cache = KnowledgeStore(f"sqlite:///{args.pool_cache}")
        generate_knowledge(extra_prompts, plain, cache, params[kind], batch_size=16, max_retries=0,
                           progress=False, truncated="accept")  # fmt: skip
        wanted = set(extra)
        for row in cache.answers(scenario=scenario.name, kind=kind).iter_rows(named=True):
            if row["entity_id"] in wanted:
                ended = row["finish_reason"] == "stop"
                pool.add(row["scenario"], kind, row["entity_id"], row["answer"], ended)
                pooled[kind].append(row["entity_id"])
        cache.close()
        took = time.perf_counter() - started
        print(f"pool top-up: {len(extra_prompts)} {kind} prompts in {took:.0f}s")
    print(f"pool: {len(pooled[KIND_USER])} user answers, {len(pooled[KIND_ITEM])} item answers")

    for kind in prompts:
        prompts[kind].sort(key=lambda p: len(backend.render(p.messages)))  # as the runner does
        pool.register(prompts[kind])
    backend.pool = pool
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"torch {torch.__version__}, 1 thread, {args.dtype}, CPU kernels {args.cpu_kernels}; "
        f"prompts: {args.prompts} user + "
        f"{args.prompts} item, max_new_tokens {params[KIND_USER].max_new_tokens} user / "
        f"{params[KIND_ITEM].max_new_tokens} item, drafts "
        f"{args.draft_shapes} (shape:draft_tokens:min_support; min_share {args.min_share}, "
        f"step_token_budget {args.step_token_budget}), "
        f"relaxed top_k:min_prob {args.relaxed}"
    )
    print("command: python benchmarks/speculative.py " + " ".join(sys.argv[1:]))

    def run(
        mode: str,
        batch_size: int,
        budget: int,
        kinds: tuple[str, ...] = (KIND_USER, KIND_ITEM),
        relaxed: tuple[int, float] = relaxed_settings[0],
        shape: tuple[str, int, int] = shapes[0],
    ) -> tuple[float, int, list[str], SpeculativeStats, str, dict[str, float], int]:
        """Seconds, tokens, answers, stats, accepted draft per kind, seconds per kind, and
        how many answers hit max_new_tokens."""
        backend.config = spec_config(
            "relaxed" if mode == "relaxed" else "exact", budget, relaxed, shape
        )
        backend.stats = SpeculativeStats()
        generate = plain_generate if mode == "plain" else backend.generate
        texts, tokens, per_kind, seconds, cut = [], 0, [], {}, 0
        for kind in kinds:
            kind_prompts = prompts[kind]
            accepted, steps = backend.stats.accepted, backend.stats.row_steps
            started = time.perf_counter()
            for start in range(0, len(kind_prompts), batch_size):
                chunk = kind_prompts[start : start + batch_size]
                outs = generate([p.messages for p in chunk], params[kind])
                texts += [o.text for o in outs]
                tokens += sum(o.completion_tokens for o in outs)
                cut += sum(o.finish_reason == "length" for o in outs)  # hit max_new_tokens
            seconds[kind] = time.perf_counter() - started
            steps = backend.stats.row_steps - steps
            mean = (backend.stats.accepted - accepted) / steps if steps else 0.0
            per_kind.append(f"{kind} {mean:.2f}")
        total = sum(seconds.values())
        return total, tokens, texts, backend.stats, ", ".join(per_kind), seconds, cut

    speedups: dict[str, dict[str, float]] = {}
    batch1_seconds: dict[str, float] = {}  # batch-1 rows, for --reference-dtype
    relaxed_speedups: dict[str, str] = {}  # the other --relaxed settings, batch 1
    identical: dict[str, str] = {}
    plain_batch1: tuple[float, list[str]] | None = None
    plain_batch1_texts: list[str] = []

    def refresh(new_films: int, plain_users: tuple[float, list[str]]) -> None:
        """Batch 1, user prompts, with each user's previous answer in the pool."""
        as_of = previous_as_of(ds.interactions, split.as_of, targets[KIND_USER], new_films)
        old = build_user_prompts(ds, scenario, as_of, user_ids=targets[KIND_USER])
        current = {p.entity_id: p.prompt_hash for p in prompts[KIND_USER]}
        changed = [p for p in old if p.prompt_hash != current[p.entity_id]]
        cache = KnowledgeStore(f"sqlite:///{args.pool_cache}")
        generate_knowledge(changed, plain, cache, params[KIND_USER], batch_size=16,
                           max_retries=0, progress=False, truncated="accept")  # fmt: skip
        wanted = {p.prompt_hash for p in changed}
        for row in cache.answers(scenario=scenario.name, kind=KIND_USER).iter_rows(named=True):
            if row["prompt_hash"] in wanted:
                ended = row["finish_reason"] == "stop"
                pool.add(row["scenario"], KIND_USER, row["entity_id"], row["answer"], ended)
        cache.close()
        print(
            f"refresh: {len(changed)} of {len(old)} target users' previous prompts (before "
            f"their last {new_films} rated films) differ from the current; their plain answers "
            "joined the pool (drafted from first)",
            flush=True,
        )
        base_s, base_texts = plain_users
        for mode in ("exact", "relaxed"):
            secs, tok, texts, stats, by_kind, *_ = run(mode, 1, budgets[0], kinds=(KIND_USER,))
            same = sum(a == b for a, b in zip(base_texts, texts, strict=True))
            print(
                f"refresh, batch 1, users {mode:<7}: {tok} tokens {secs:7.1f}s "
                f"{tok / secs:6.1f} tok/s speedup {base_s / secs:.2f}x (vs plain users above), "
                f"forward passes {stats.forward_passes}, mean accepted draft "
                f"{stats.mean_accepted:.2f}/step, identical to greedy {same}/{len(texts)}",
                flush=True,
            )

    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        base_s, base_tok, base_texts, _, _, base_kinds, cut = run("plain", batch_size, budgets[0])
        if batch_size == 1:
            plain_batch1 = (base_kinds[KIND_USER], base_texts[: len(prompts[KIND_USER])])
            plain_batch1_texts = base_texts
            batch1_seconds[f"plain {args.dtype}"] = base_s
        print(
            f"batch {batch_size:>2} plain  : {base_tok} tokens {base_s:7.1f}s "
            f"{base_tok / base_s:6.1f} tok/s ({cut} of {len(base_texts)} answers hit "
            "max_new_tokens)",
            flush=True,
        )
        # at batch 1 every budget gives the same drafts (the first only); there each
        # draft shape runs instead
        if batch_size > 1:
            variants = [(b, shapes[0]) for b in budgets]
        else:
            variants = [(budgets[0], shape) for shape in shapes]
        for budget, shape in variants:
            label = f"batch {batch_size}, budget {budget}"
            if batch_size == 1 and shape != shapes[0]:
                label += f", {shape[0]} {shape[1]} tokens min_support {shape[2]}"
            per_row = spec_config("exact", budget, shape=shape).drafts_per_row(batch_size)
            speedups[label] = {}
            for mode in ("exact", "relaxed"):
                secs, tok, texts, stats, by_kind, *_ = run(mode, batch_size, budget, shape=shape)
                same = sum(a == b for a, b in zip(base_texts, texts, strict=True))
                speedups[label][mode] = base_s / secs
                # prefill: the prompts' passes, the same in every mode; no draft shortens it
                decode = (base_s - stats.prefill_seconds) / (secs - stats.prefill_seconds)
                if batch_size == 1:
                    batch1_seconds[f"{label} {mode}"] = secs
                if mode == "exact":
                    identical[label] = f"{same}/{len(texts)}"
                drafts = (
                    f"{per_row}-token {shape[0]} drafts" if per_row else "no drafts: plain generate"
                )
                print(
                    f"{label} ({drafts}) {mode:<7}: {tok} tokens {secs:7.1f}s "
                    f"{tok / secs:6.1f} tok/s speedup {base_s / secs:.2f}x (decoding alone "
                    f"{decode:.2f}x: prefill {stats.prefill_seconds:.1f}s), forward passes "
                    f"{stats.forward_passes}, mean accepted draft {stats.mean_accepted:.2f}/step "
                    f"({by_kind}), identical to greedy {same}/{len(texts)}",
                    flush=True,
                )
        if batch_size == 1:
            budget, _ = variants[0]
            for top_k, min_prob in relaxed_settings[1:]:
                secs, tok, texts, stats, by_kind, *_ = run(
                    "relaxed", 1, budget, relaxed=(top_k, min_prob)
                )
                same = sum(a == b for a, b in zip(base_texts, texts, strict=True))
                label = f"batch 1, relaxed top_k {top_k} min_prob {min_prob:g}"
                relaxed_speedups[label] = f"{base_s / secs:.2f} (identical {same}/{len(texts)})"
                batch1_seconds[label] = secs
                print(
                    f"{label}: {tok} tokens {secs:7.1f}s {tok / secs:6.1f} tok/s speedup "
                    f"{base_s / secs:.2f}x, forward passes {stats.forward_passes}, mean "
                    f"accepted draft {stats.mean_accepted:.2f}/step ({by_kind}), identical to "
                    f"greedy {same}/{len(texts)}",
                    flush=True,
                )
    if args.refresh_new and plain_batch1 is not None:
        refresh(args.refresh_new, plain_batch1)
    for label, ratios in speedups.items():
        print(
            f"{label}: speedup_exact {ratios['exact']:.2f} "
            f"(identical {identical[label]}), speedup_relaxed {ratios['relaxed']:.2f}"
        )
    if args.reference_dtype and plain_batch1 is not None:
        reference(args.reference_dtype, not args.reference_default_kernels, prompts, params,
                  batch1_seconds, plain_batch1_texts)  # fmt: skip
    for label, ratio in relaxed_speedups.items():
        print(f"{label}: speedup_relaxed {ratio}")
    first = next(iter(speedups))
    print(f"speedup_relaxed: {speedups[first]['relaxed']:.2f}")
    print(f"speedup_exact: {speedups[first]['exact']:.2f} identical_outputs: {identical[first]}")


def reference(
    dtype: str,
    cpu_kernels: bool,
    prompts: dict,
    params: dict,
    rows: dict[str, float],
    plain_texts: list[str],
) -> None:
    """Plain greedy at batch 1 on a second model in ``dtype`` (on kar's CPU kernels or
    PyTorch's); each row's speedup vs it. ``prompts`` and ``params`` are keyed by kind, in
    the order of this run's plain batch-1 answers ``plain_texts``."""
    from kar.generation.transformers_backend import TransformersBackend

    model = TransformersBackend(dtype=dtype, threads=1, cpu_kernels=cpu_kernels)  # type: ignore[arg-type]
    name = f"{dtype}{'' if cpu_kernels else ' (PyTorch default kernels)'}"
    texts, tokens, started = [], 0, time.perf_counter()
    for kind, kind_prompts in prompts.items():
        for prompt in kind_prompts:
            (out,) = model.generate([prompt.messages], params[kind])
            texts.append(out.text)
            tokens += out.completion_tokens
    seconds = time.perf_counter() - started
    same = sum(a == b for a, b in zip(plain_texts, texts, strict=True))
    print(
        f"reference, batch 1 plain {name}: {tokens} tokens {seconds:7.1f}s "
        f"{tokens / seconds:6.1f} tok/s ({same}/{len(texts)} answers equal this run's plain "
        "ones)",
        flush=True,
    )
    for label, secs in rows.items():
        print(f"vs plain {name}: {label} {seconds / secs:.2f}x")


def previous_as_of(interactions, as_of, users: list[str], new_films: int):  # noqa: ANN001, ANN201
    """Per user, the instant of their ``new_films``-th last rating before ``as_of``: a
    prompt as of then leaves out those last ratings (the answer before a refresh)."""
    import polars as pl

    return (
        interactions.filter(pl.col("user_id").is_in(users))
        .join(as_of, on="user_id")
        .filter(pl.col("timestamp") < pl.col("as_of"))
        .sort("timestamp")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("timestamp").tail(new_films).first().alias("as_of"))
    )


if __name__ == "__main__":
    main()
