"""Describe the knowledge feature views registered in a repo (for the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kar.features.repo import feature_store


def list_knowledge_views(repo: Path) -> list[dict[str, Any]]:
    """One dict per registered feature view: name, entities, features, dtype (all the
    features' types), types (feature -> its type), tags; on-demand views (the
    ``knowledge_affinity`` score) last, with ``on_demand`` and their ``sources``."""
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
    for odfv in sorted(store.list_on_demand_feature_views(), key=lambda v: v.name):
        sources = [
            store.get_feature_view(p.name) for p in odfv.source_feature_view_projections.values()
        ]
        sources.sort(key=lambda v: ("user" not in v.entities, v.name))  # user side first
        entities = list(dict.fromkeys(e for view in sources for e in view.entities))
        dtypes = sorted({str(f.dtype) for f in odfv.features})
        views.append(
            {
                "name": odfv.name,
                "entities": entities,
                "features": [f.name for f in odfv.features],
                "dtype": dtypes[0] if len(dtypes) == 1 else ", ".join(dtypes),
                "types": {f.name: str(f.dtype) for f in odfv.features},
                "tags": dict(odfv.tags),
                "on_demand": True,  # computed when read from its sources' vectors
                "sources": [view.name for view in sources],
            }
        )
    return views
