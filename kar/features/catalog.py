"""Describe the knowledge feature views registered in a repo (for the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kar.features.repo import feature_store


def list_knowledge_views(repo: Path) -> list[dict[str, Any]]:
    """One dict per registered feature view: name, entities, features, dtype (all the
    features' types), types (feature -> its type), tags."""
    store = feature_store(repo)
    views = []
    for fv in sorted(store.list_feature_views(), key=lambda v: v.name):
        dtypes = sorted({str(f.dtype) for f in fv.features})
        views.append(
            {
                "name": fv.name,
                "entities": list(fv.entities),
                "features": [f.name for f in fv.features],
                "dtype": dtypes[0] if len(dtypes) == 1 else ", ".join(dtypes),
                "types": {f.name: str(f.dtype) for f in fv.features},  # each feature's own
                "tags": dict(fv.tags),
            }
        )
    return views
