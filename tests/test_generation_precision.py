"""generation.dtype: auto -> bfloat16 where the machine computes it natively, else float32."""

from __future__ import annotations

from pathlib import Path

import pytest

from kar.generation.precision import backend_dtype, cpu_flags, native_bfloat16, resolve_dtype

ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx fma avx2\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


def cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_auto_reads_the_cpu_flags(tmp_path: Path) -> None:
    no_gpu = tmp_path / "no-nvidia-driver"
    assert resolve_dtype("auto", cpuinfo(tmp_path, ZEN3), no_gpu) == "float32"  # AVX2 only
    assert resolve_dtype("auto", cpuinfo(tmp_path, ZEN4), no_gpu) == "bfloat16"
    assert resolve_dtype("auto", cpuinfo(tmp_path, SAPPHIRE_RAPIDS), no_gpu) == "bfloat16"
    assert cpu_flags(cpuinfo(tmp_path, ZEN3)) >= {"avx2", "fma"}
    # unreadable /proc/cpuinfo (another OS): float32, the safe choice
    assert resolve_dtype("auto", tmp_path / "missing", no_gpu) == "float32"


def test_an_nvidia_gpu_gets_bfloat16_and_explicit_values_are_kept(tmp_path: Path) -> None:
    driver = tmp_path / "nvidia-version"
    driver.write_text("NVRM version: 550\n")
    assert native_bfloat16(cpuinfo(tmp_path, ZEN3), driver)
    assert resolve_dtype("auto", cpuinfo(tmp_path, ZEN3), driver) == "bfloat16"
    for dtype in ("bfloat16", "float32"):
        assert resolve_dtype(dtype, cpuinfo(tmp_path, ZEN3), driver) == dtype
    with pytest.raises(ValueError, match="auto, bfloat16 or float32"):
        resolve_dtype("float16")
    from kar.errors import ConfigError

    with pytest.raises(ConfigError, match="got 'float16'"):  # a backend's one-line error
        backend_dtype("float16")


def test_settings_resolve_auto_when_they_load(tmp_path: Path) -> None:
    from kar.errors import ConfigError
    from kar.project import GenerationSettings, ProjectFolder

    assert GenerationSettings().dtype == resolve_dtype("auto")  # this machine's
    assert GenerationSettings(dtype="float32").dtype == "float32"
    (tmp_path / "kar.yaml").write_text("generation:\n  dtype: float16\n")
    with pytest.raises(ConfigError, match="generation.dtype"):
        ProjectFolder.load(tmp_path)
