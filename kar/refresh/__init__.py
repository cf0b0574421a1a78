"""Incremental, periodic and streaming knowledge refresh (issue 6).

``refresh(project)`` regenerates knowledge only for users with interactions after the
source's watermark and for items new to the catalog, and publishes it offline (new
Parquet parts) and online (push). ``StreamRefresher`` does the same from a Redis Stream.
Heavy packages (feast, torch, redis) are imported when used.
"""

from kar.refresh.report import RefreshReport
from kar.refresh.run import default_source, knowledge_time, plan_refresh, refresh
from kar.refresh.schedule import parse_interval, run_every
from kar.refresh.state import RefreshState

__all__ = [
    "RefreshReport",
    "RefreshState",
    "default_source",
    "knowledge_time",
    "parse_interval",
    "plan_refresh",
    "refresh",
    "run_every",
]
