"""What a benchmark ran on: the CPU's model name and the core count, for every figure."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model name (Linux /proc/cpuinfo), else platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """``<CPU> (N cores, x86_64), Python 3.11.7``."""
    return (
        f"{cpu_name()} ({os.cpu_count()} cores, {platform.machine()}), "
        f"Python {platform.python_version()}"
    )
