"""Shared fixtures. Real data comes from ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KAR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {path} (set KAR_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    path = SHARED_DATA / "ml-1m"
    if not (path / "movies.dat").exists():
        pytest.skip(f"MovieLens 1M not found at {path} (set KAR_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def synthetic_features():
    """Small synthetic CTR features with 8-dim knowledge that carries signal (built once)."""
    from kar.models.inputs import CTRFeatures
    from kar.models.toydata import simple_time_split, synthetic_dataset, synthetic_knowledge

    ds, truth = synthetic_dataset(n_users=120, n_items=400, n_rows=4000)
    users, items = synthetic_knowledge(ds, truth, dim=8)
    split = simple_time_split(ds.interactions)
    return CTRFeatures.build(ds, split, history_len=5, knowledge_users=users, knowledge_items=items)


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """duckdb (under Feast) prints "nanobind: leaked instances" at interpreter teardown,
    after pytest's summary line; once it is loaded, end the process right after the summary
    (as the `kar` entry point does) so the summary stays the last line."""
    import sys

    if "duckdb" in sys.modules and _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
