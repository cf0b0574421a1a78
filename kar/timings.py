"""Wall time of each stage run, kept in the project's ``artifacts/timings.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kar.project import ProjectFolder


@contextmanager
def timed_stage(project: ProjectFolder, stage: str) -> Iterator[None]:
    """Add the wall time of a stage run, finished, interrupted or failed, to
    ``artifacts/timings.json``: per stage ``{"total_s", "last_s", "runs"}`` (a resumed
    stage's total counts every run)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _add_timing(project.timings_path, stage, time.perf_counter() - start)


def _add_timing(path: Path, stage: str, seconds: float) -> None:
    """Add one run of ``stage`` to the timings file (an older file's bare number counts as
    one run of that many seconds; an unreadable file starts again), replaced whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        timings = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        timings = {}
    old = timings.get(stage)
    if isinstance(old, int | float):
        old = {"total_s": old, "last_s": old, "runs": 1}
    old = old or {"total_s": 0.0, "runs": 0}
    timings[stage] = {
        "total_s": round(old["total_s"] + seconds, 2),
        "last_s": round(seconds, 2),
        "runs": old["runs"] + 1,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(timings, indent=2))
    tmp.replace(path)
