"""Replay exact-mode drafting over stored greedy answers: the tokenizer, no decoding.

    python benchmarks/draft_replay.py --pool-db STORE [--data ML100K] [--prompts 0]
        [--tree 0,8,12,15] [--measure-cost float32] [--answer-tokens 64]

Every answer of a knowledge store (``benchmarks/movielens.py --generate-only`` with a
float32 greedy backend, so the stored answer is what exact mode must reproduce) is
replayed as speculative decoding would make it: at each step the drafter proposes tokens
(prompt lookup, or the pool of every OTHER entity's answer), exact mode keeps the longest
prefix equal to the answer's next tokens, and one more token comes from the model. For
each kind and draft shape (``--tree``: one draft, a chain, or a draft tree of N nodes,
where the longest path matching the answer is kept) it prints the mean accepted draft per
step, drafted tokens per step and tokens per step (the speedup were a verification pass
as cheap as a one-token step).
``--measure-cost DTYPE`` loads the model once, times a one-token step and passes of
2..16 tokens over a 450-token cache (kar's CPU kernels), and adds the speedup those
costs predict (a real run adds the drafting's own time). Policies compare in
seconds instead of a model-bound benchmark's hour. Re-encoding a stored answer may split
it into other tokens than the model made, so the figures are close to a real run's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ml-100k"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--pool-db", type=Path, required=True, help="SQLite knowledge store")
    parser.add_argument(
        "--prompts", type=int, default=0, help="replay the first N entities per kind (0: all)"
    )
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument("--max-n", type=int, default=4, help="longest suffix matched")
    parser.add_argument(
        "--tree",
        default="0",
        help="comma list: 0 = one draft of --draft-tokens (a chain); N = a draft tree of N nodes",
    )
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=0,
        help="replay only each answer's first N tokens, as a max_new_tokens of N would cut "
        "it (0: whole answers)",
    )
    parser.add_argument("--min-support", type=int, default=1)
    parser.add_argument("--min-share", type=float, default=0.5)
    parser.add_argument(
        "--measure-cost", choices=["float32", "bfloat16"], help="time passes of 1..9 tokens"
    )
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from kar.data import load_movielens, make_time_split
    from kar.generation import KnowledgeStore
    from kar.generation.model_files import bundled_model_dir
    from kar.generation.speculative import KnowledgePool, SpeculativeConfig
    from kar.generation.speculative.backend import generation_prompt_tokens
    from kar.generation.speculative.drafts import make_draft, make_draft_tree
    from kar.generation.store import copy_sqlite_store
    from kar.prompts import Scenario, build_item_prompts, build_user_prompts
    from kar.records import KIND_ITEM, KIND_USER

    if not (args.data / "u.data").exists():
        sys.exit(f"MovieLens-100K not found at {args.data}: pass --data")
    if not args.pool_db.exists():
        sys.exit(f"no knowledge store at {args.pool_db}")
    cost = measure_cost(args.measure_cost) if args.measure_cost else None
    ds = load_movielens(args.data, variant="ml-100k")
    split = make_time_split(ds)
    scenario = Scenario.load("movies")
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    prefix = generation_prompt_tokens(tokenizer)  # "<|im_start|>assistant\n"
    eos = tokenizer.eos_token_id

    with tempfile.TemporaryDirectory() as tmp:
        store = KnowledgeStore(f"sqlite:///{copy_sqlite_store(args.pool_db, Path(tmp) / 'p.db')}")
        answers = store.answers(scenario=scenario.name)
        store.close()
    prompts = {
        KIND_USER: {p.prompt_hash: p for p in build_user_prompts(ds, scenario, split.as_of)},
        KIND_ITEM: {p.prompt_hash: p for p in build_item_prompts(ds, scenario)},
    }
    rows: dict[str, list[dict]] = {KIND_USER: [], KIND_ITEM: []}
    for row in answers.iter_rows(named=True):  # the answers to the current prompts
        if row["kind"] in rows and row["prompt_hash"] in prompts[row["kind"]]:
            rows[row["kind"]].append(row)

    print(
        f"store {args.pool_db}: {len(rows[KIND_USER])} user and {len(rows[KIND_ITEM])} item "
        f"answers to the current prompts; draft_tokens {args.draft_tokens}, min_support "
        f"{args.min_support}, min_share {args.min_share}, answers cut to "
        f"{args.answer_tokens or 'no'} tokens"
    )
    if cost:
        widths = ", ".join(f"{w}: {c:.2f}" for w, c in cost.items())
        print(f"pass cost vs a one-token step ({args.measure_cost}, 1 thread): {widths}")
    print("command: python benchmarks/draft_replay.py " + " ".join(sys.argv[1:]))
    for kind in (KIND_USER, KIND_ITEM):
        kind_rows = sorted(rows[kind], key=lambda r: int(r["entity_id"]))
        targets = kind_rows[: args.prompts] if args.prompts else kind_rows
        if not targets:
            print(f"{kind}: no answers in the store, skipped")
            continue
        pool = KnowledgePool(encode, prefix=prefix, eos=eos, exclude_own=True, max_n=args.max_n)
        for r in kind_rows:
            pool.add(r["scenario"], kind, r["entity_id"], r["answer"],
                     r["finish_reason"] in ("stop", "trimmed"))  # fmt: skip
        pool.register(prompts[kind].values())
        for tree_nodes in (int(t) for t in args.tree.split(",")):
            config = SpeculativeConfig(
                draft_tokens=args.draft_tokens,
                min_support=args.min_support,
                min_share=args.min_share,
                max_n=args.max_n,
            )
            started = time.perf_counter()
            steps = accepted = drafted = made = 0
            widths: dict[int, int] = {}
            for r in targets:
                prompt = prompts[kind][r["prompt_hash"]]
                route = pool.route(prompt.messages)
                answer = encode(r["answer"])
                if r["finish_reason"] in ("stop", "trimmed"):
                    answer.append(eos)
                if args.answer_tokens:
                    answer = answer[: args.answer_tokens]
                # the prefill pass makes the first token
                context = [*encode(render(list(prompt.messages))), answer[0]]
                done = 1
                while done < len(answer):
                    if tree_nodes:
                        room = min(tree_nodes, len(answer) - done - 1)
                        tree = make_draft_tree(context, route, room, config)
                        n_ok = len(tree.follow(answer[done : done + room]))
                        draft = tree.tokens
                    else:
                        room = min(args.draft_tokens, len(answer) - done - 1)
                        draft = make_draft(context, route, room, config)
                        n_ok = 0
                        while n_ok < len(draft) and draft[n_ok] == answer[done + n_ok]:
                            n_ok += 1
                    context.extend(answer[done : done + n_ok + 1])
                    done += n_ok + 1
                    steps += 1
                    accepted += n_ok
                    drafted += len(draft)
                    widths[1 + len(draft)] = widths.get(1 + len(draft), 0) + 1
                made += len(answer) - 1
            took = time.perf_counter() - started
            predicted = ""
            if cost:
                units = sum(n * cost[min(w, max(cost))] for w, n in widths.items())
                predicted = f", predicted speedup {made / units:.2f}"
            print(
                f"{kind:<15} {f'tree {tree_nodes}' if tree_nodes else 'chain'}: "
                f"{len(targets)} answers, accepted {accepted / steps:.2f}/step, drafted "
                f"{drafted / steps:.2f}/step ({accepted / max(drafted, 1):.0%} kept), "
                f"tokens per step {made / steps:.2f}{predicted} ({took:.0f}s)",
                flush=True,
            )


def measure_cost(
    dtype: str, context: int = 450, repeats: int = 15, widths: int = 16
) -> dict[int, float]:
    """Median time of a pass of 1..``widths`` tokens (with a mask) over a ``context``-token
    KV cache, relative to the one-token pass (SmolLM2 on kar's CPU kernels, 1 thread)."""
    import torch
    from transformers import DynamicCache

    from kar.generation.transformers_backend import TransformersBackend

    model = TransformersBackend(dtype=dtype, threads=1).model  # type: ignore[arg-type]
    prompt = torch.randint(100, 40000, (1, context))
    mask = torch.ones(1, context, dtype=torch.long)
    times: dict[int, list[float]] = {width: [] for width in range(1, widths + 1)}
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, attention_mask=mask, past_key_values=cache, use_cache=True,
              logits_to_keep=1)  # fmt: skip
        for _ in range(repeats):  # widths interleaved, so a busy spell hits them alike
            for width in times:
                step = torch.randint(100, 40000, (1, width))
                positions = torch.arange(context, context + width).unsqueeze(0)
                step_mask = torch.cat([mask, torch.ones(1, width, dtype=torch.long)], dim=1)
                started = time.perf_counter()
                model(input_ids=step, attention_mask=step_mask, position_ids=positions,
                      past_key_values=cache, use_cache=True)  # fmt: skip
                times[width].append(time.perf_counter() - started)
                cache.crop(-width)
    seconds = {width: sorted(t)[repeats // 2] for width, t in times.items()}
    return {w: s / seconds[1] for w, s in seconds.items()}


if __name__ == "__main__":
    main()
