"""Run a job every N seconds until interrupted (``kar refresh --every 1h``)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from kar.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"1d"`` or a number of seconds -> seconds (> 0)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ConfigError(f"interval {text!r}: expected a number and a unit s, m, h or d (e.g. 1h)")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"interval {text!r} must be positive")
    return seconds


def run_every(
    every_s: float,
    job: Callable[[], object],
    *,
    stop: threading.Event | None = None,
    max_runs: int | None = None,
) -> int:
    """Call ``job`` now and then every ``every_s`` seconds (start to start) until ``stop`` is
    set, ``max_runs`` is reached or KeyboardInterrupt. Returns the number of runs."""
    stop = stop or threading.Event()
    runs = 0
    while not stop.is_set():
        started = time.monotonic()
        job()
        runs += 1
        if max_runs is not None and runs >= max_runs:
            break
        stop.wait(max(0.0, every_s - (time.monotonic() - started)))
    return runs
