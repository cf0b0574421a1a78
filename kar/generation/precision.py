"""The LLM's number format where ``generation.dtype: auto``: bfloat16 where the hardware
computes it natively, float32 elsewhere.

bfloat16 halves the weights' memory and runs about twice as fast as float32 on CPUs with
bfloat16 instructions (AVX-512 BF16: AMD Zen 4, Intel Cooper Lake and later; AMX: Intel
Sapphire Rapids) and on NVIDIA GPUs. Without them the CPU emulates it: a 256 x 576 x 1536
matrix product ran at 1.3 GFLOPS in bfloat16 against 146 GFLOPS in float32 on a 2-core AMD
EPYC (Zen 3, AVX2 only), so generation in bfloat16 there is two orders of magnitude slower
(benchmarks/engines.py). The choice is read from the CPU's flags (``/proc/cpuinfo``) and
the NVIDIA driver's presence, without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Dtype = Literal["bfloat16", "float32"]
# CPU flags (as /proc/cpuinfo names them) of native bfloat16 arithmetic
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first CPU's feature flags (empty where ``cpuinfo`` cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bfloat16(cpuinfo: Path = CPUINFO, nvidia: Path = NVIDIA_DRIVER) -> bool:
    """Whether this machine computes bfloat16 natively: an NVIDIA GPU, or a CPU with
    AVX-512 BF16 or AMX."""
    return nvidia.exists() or bool(cpu_flags(cpuinfo) & BF16_CPU_FLAGS)


def resolve_dtype(dtype: str, cpuinfo: Path = CPUINFO, nvidia: Path = NVIDIA_DRIVER) -> Dtype:
    """``auto`` -> ``bfloat16`` where :func:`native_bfloat16`, else ``float32``; the other
    values as they are."""
    if dtype == "auto":
        return "bfloat16" if native_bfloat16(cpuinfo, nvidia) else "float32"
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be auto, bfloat16 or float32, got {dtype!r}")
    return dtype  # type: ignore[return-value]


def backend_dtype(dtype: str) -> Dtype:
    """:func:`resolve_dtype` for a backend's constructor: a bad value is a ConfigError."""
    from kar.errors import ConfigError

    try:
        return resolve_dtype(dtype)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
