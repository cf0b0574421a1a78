"""kar's CPU kernels vs PyTorch's defaults: the cost of a forward pass of 1..9 tokens.

    python benchmarks/cpu_kernels.py [--dtype float32] [--reps 15] [--cache 450]

Loads the bundled SmolLM2 twice, once with ``TransformersBackend(cpu_kernels=False)``
(PyTorch's default kernels) and once with kar's (:mod:`kar.generation.cpu_kernels`:
oneDNN-prepacked linear weights, copy-free grouped-query attention), fills a
``--cache``-token KV cache in each, then times passes of 1..9 new tokens with an attention
mask (what a speculative verification pass is: the last token plus up to 8 draft tokens),
the two models and the widths interleaved, 1 torch thread. Prints, per kernel set, the
median milliseconds and each width's cost relative to its own one-token step, then the
ratio default / kar. Speculative decoding gains only where a wide pass costs about what a
one-token step does.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=15, help="timings per width and model")
    parser.add_argument("--cache", type=int, default=450, help="tokens already cached")
    args = parser.parse_args()

    import torch
    from transformers import DynamicCache

    from kar.generation.transformers_backend import TransformersBackend

    torch.manual_seed(0)
    models = {
        kar: TransformersBackend(dtype=args.dtype, threads=1, cpu_kernels=kar).model
        for kar in (False, True)
    }
    widths = range(1, 10)
    cached = torch.randint(100, 40000, (1, args.cache))
    mask = torch.ones(1, args.cache, dtype=torch.long)
    timings: dict[tuple[bool, int], list[float]] = {(k, w): [] for k in models for w in widths}
    with torch.inference_mode():
        caches = {}
        for kar, model in models.items():
            caches[kar] = DynamicCache(config=model.config)
            model(input_ids=cached, attention_mask=mask, past_key_values=caches[kar],
                  use_cache=True, logits_to_keep=1)  # fmt: skip
        for _ in range(args.reps):
            for width in widths:
                new = torch.randint(100, 40000, (1, width))
                positions = torch.arange(args.cache, args.cache + width).unsqueeze(0)
                step_mask = torch.cat([mask, torch.ones(1, width, dtype=torch.long)], dim=1)
                for kar, model in models.items():
                    started = time.perf_counter()
                    model(input_ids=new, attention_mask=step_mask, position_ids=positions,
                          past_key_values=caches[kar], use_cache=True)  # fmt: skip
                    timings[(kar, width)].append(time.perf_counter() - started)
                    caches[kar].crop(-width)
    ms = {key: 1e3 * sorted(v)[len(v) // 2] for key, v in timings.items()}

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), torch "
        f"{torch.__version__}, 1 thread, {args.dtype}; SmolLM2-135M-Instruct, a pass of 1..9 "
        f"tokens over a {args.cache}-token cache with a mask, median of {args.reps}, kernel "
        "sets and widths interleaved"
    )
    print("command: python benchmarks/cpu_kernels.py " + " ".join(sys.argv[1:]))
    print("| kernels | " + " | ".join(f"{w} tok" for w in widths) + " |")
    print("| --- |" + " --- |" * len(widths))
    for kar in models:
        name = "kar cpu_kernels" if kar else "PyTorch default"
        print(f"| {name}, ms | " + " | ".join(f"{ms[(kar, w)]:.1f}" for w in widths) + " |")
        print(
            f"| {name}, vs its one-token step | "
            + " | ".join(f"{ms[(kar, w)] / ms[(kar, 1)]:.2f}" for w in widths)
            + " |"
        )
    print(
        "| default / kar | "
        + " | ".join(f"{ms[(False, w)] / ms[(True, w)]:.2f}" for w in widths)
        + " |"
    )
    wide = [ms[(True, w)] / ms[(True, 1)] for w in widths if w > 1]
    print(f"kar_wide_pass_vs_step: {sum(wide) / len(wide):.2f}")


if __name__ == "__main__":
    main()
