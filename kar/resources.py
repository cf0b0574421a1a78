"""Locate the folders kar ships: prompts/, experts/, feature_repo/.

In a wheel they live under ``kar/_bundled``; in a source checkout (editable install)
they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """Return the shipped folder ``name`` (``prompts``, ``experts`` or ``feature_repo``)."""
    for candidate in (_PACKAGE_DIR / "_bundled" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"kar resource folder {name!r} not found next to {_PACKAGE_DIR}")
