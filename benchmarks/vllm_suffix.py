"""vLLM's own pool-style speculative decoding (suffix decoding) vs plain vLLM, one process.

    python benchmarks/vllm_suffix.py [--prompts 64] [--warm 256] [--batch-sizes 1,16]
        [--dtype float32] [--max-new-tokens 64] [--spec-tokens 8]

Needs ``arctic-inference`` (vLLM's suffix method imports its suffix tree; no wheel for
this machine: build the sdist, see docs/speculative.md). Suffix decoding drafts from a
suffix tree over the engine's earlier responses (up to 10,000 cached requests) and the
prompt: vLLM's counterpart of DARE's knowledge pool. On the same MovieLens-100K prompts as
``benchmarks/speculative.py`` (the first ``--prompts`` users and items), it times plain
vLLM and vLLM + suffix decoding at each batch size, after the suffix engine answered
``--warm`` prompts per kind of OTHER users and items (its pool; untimed). Each timed run's
own responses are evicted from the suffix cache after it, so no run drafts from an earlier
answer to the same prompt. Prints tokens/s, vLLM's spec-decode counters (mean accepted
tokens per draft) and how many answers equal plain vLLM's; last,
``vllm_suffix_speedup: X.XX identical_outputs: N/M`` for the first batch size.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ml-100k"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--prompts", type=int, default=64, help="user and item prompts, each")
    parser.add_argument("--warm", type=int, default=256, help="pool prompts per kind")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--spec-tokens", type=int, default=8, help="most draft tokens per step")
    args = parser.parse_args()

    try:
        import arctic_inference.suffix_decoding  # noqa: F401
    except ImportError as exc:
        sys.exit(f"vLLM's suffix decoding needs arctic-inference ({exc}): see docs/speculative.md")
    import vllm

    from kar.data import load_movielens, make_time_split
    from kar.generation.vllm_backend import VLLMBackend
    from kar.prompts import Scenario, build_item_prompts, build_user_prompts
    from kar.records import KIND_ITEM, KIND_USER

    if not (args.data / "u.data").exists():
        sys.exit(f"MovieLens-100K not found at {args.data}: pass --data")
    ds = load_movielens(args.data, variant="ml-100k")
    split = make_time_split(ds)
    scenario = Scenario.load("movies")
    user_ids = sorted(set(ds.interactions["user_id"].to_list()), key=int)
    item_ids = sorted(set(ds.items["item_id"].to_list()), key=int)
    n, w = args.prompts, args.warm
    targets = {
        KIND_USER: build_user_prompts(ds, scenario, split.as_of, user_ids=user_ids[:n]),
        KIND_ITEM: build_item_prompts(ds, scenario, item_ids=item_ids[:n]),
    }
    warm = {  # other entities: the last ids
        KIND_USER: build_user_prompts(ds, scenario, split.as_of, user_ids=user_ids[-w:]),
        KIND_ITEM: build_item_prompts(ds, scenario, item_ids=item_ids[-w:]),
    }
    params = {
        k: scenario.sampling_params(k, max_new_tokens=args.max_new_tokens)
        for k in (KIND_USER, KIND_ITEM)
    }
    spec = {"method": "suffix", "num_speculative_tokens": args.spec_tokens}
    plain = VLLMBackend(dtype=args.dtype, disable_log_stats=False)
    suffix = VLLMBackend(dtype=args.dtype, speculative=spec, disable_log_stats=False)
    cache = suffix_cache(suffix)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared); vllm {vllm.__version__}, {args.dtype}; prompts: {n} user + {n} item, "
        f"max_new_tokens {args.max_new_tokens}; suffix pool: {len(warm[KIND_USER])} user + "
        f"{len(warm[KIND_ITEM])} item answers of other entities; speculative_config {spec}"
    )
    print("command: python benchmarks/vllm_suffix.py " + " ".join(sys.argv[1:]), flush=True)

    def run(backend: VLLMBackend, prompts: dict, batch_size: int) -> tuple[float, int, list]:
        texts, tokens = [], 0
        started = time.perf_counter()
        for kind, kind_prompts in prompts.items():
            for start in range(0, len(kind_prompts), batch_size):
                chunk = kind_prompts[start : start + batch_size]
                outs = backend.generate([p.messages for p in chunk], params[kind])
                texts += [o.text for o in outs]
                tokens += sum(o.completion_tokens for o in outs)
        return time.perf_counter() - started, tokens, texts

    started = time.perf_counter()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for batch_size in batch_sizes:  # compile warm-up at every timed batch size
        sample = {k: v[-batch_size:] for k, v in warm.items()}
        run(plain, sample, batch_size)
        run(suffix, sample, batch_size)
    _, warm_tokens, _ = run(suffix, warm, 32)
    print(f"suffix pool: {warm_tokens} tokens answered in {time.perf_counter() - started:.0f}s")

    results = []
    for batch_size in batch_sizes:
        base_s, base_tok, base_texts = run(plain, targets, batch_size)
        before = set(cache.cached_requests)
        counters = spec_counters(suffix)
        secs, tok, texts = run(suffix, targets, batch_size)
        drafts, drafted, accepted = (
            a - b for a, b in zip(spec_counters(suffix), counters, strict=True)
        )
        for request in set(cache.cached_requests) - before:  # no later run drafts from these
            cache.evict_cached_response(request)
        same = sum(a == b for a, b in zip(base_texts, texts, strict=True))
        results.append((base_s / secs, f"{same}/{len(texts)}"))
        print(
            f"batch {batch_size:>2}: plain {base_tok} tokens {base_s:6.1f}s "
            f"{base_tok / base_s:6.1f} tok/s; suffix {tok} tokens {secs:6.1f}s "
            f"{tok / secs:6.1f} tok/s, speedup {base_s / secs:.2f}x, {drafts} drafts, "
            f"{drafted} draft tokens, mean accepted {accepted / max(drafts, 1):.2f}/draft "
            f"({accepted / max(drafted, 1):.0%} kept), identical to plain {same}/{len(texts)}",
            flush=True,
        )
    print(f"vllm_suffix_speedup: {results[0][0]:.2f} identical_outputs: {results[0][1]}")


def suffix_cache(backend: object) -> object:
    """The suffix decoding proposer's cache inside an in-process vLLM engine."""
    try:
        core = backend.llm.llm_engine.engine_core.engine_core  # type: ignore[attr-defined]
        runner = core.model_executor.driver_worker.worker.model_runner
        return runner.drafter.suffix_cache
    except AttributeError as exc:
        sys.exit(f"cannot reach vLLM's suffix cache (engine not in-process?): {exc}")


def spec_counters(backend: object) -> tuple[int, int, int]:
    """vLLM's running totals: drafts, draft tokens, accepted tokens."""
    totals = {"drafts": 0, "draft_tokens": 0, "accepted_tokens": 0}
    for metric in backend.llm.get_metrics():  # type: ignore[attr-defined]
        for key in totals:
            if metric.name == f"vllm:spec_decode_num_{key}":
                totals[key] += int(metric.value)
    return totals["drafts"], totals["draft_tokens"], totals["accepted_tokens"]


if __name__ == "__main__":
    main()
