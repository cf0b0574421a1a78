"""Feast integration: the feature repository, publish, training sets and online reads.

Names are imported on first use, so ``import kar.features`` does not import feast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "init_feature_repo": "kar.features.repo",
    "feature_store": "kar.features.repo",
    "apply_repo": "kar.features.repo",
    "update_lineage": "kar.features.repo",
    "publish": "kar.features.publishing",
    "push_online": "kar.features.publishing",
    "PublishReport": "kar.features.publishing",
    "training_set": "kar.features.offline",
    "OnlineKnowledge": "kar.features.serving",
    "KnowledgeBatch": "kar.features.online",
    "list_knowledge_views": "kar.features.catalog",
    "KnowledgeFeature": "kar.features.declare",
    "add_features": "kar.features.declare",
    "load_declarations": "kar.features.declare",
    "publish_feature": "kar.features.declare",
    "retire_feature": "kar.features.declare",
    "KnowledgeServer": "kar.features.serving",
    "HttpReader": "kar.features.serving",
}
__all__ = [
    "HttpReader",
    "KnowledgeBatch",
    "KnowledgeFeature",
    "KnowledgeServer",
    "add_features",
    "load_declarations",
    "publish_feature",
    "retire_feature",
    "OnlineKnowledge",
    "PublishReport",
    "apply_repo",
    "feature_store",
    "init_feature_repo",
    "list_knowledge_views",
    "publish",
    "push_online",
    "training_set",
    "update_lineage",
]

if TYPE_CHECKING:
    from kar.features.catalog import list_knowledge_views
    from kar.features.declare import (
        KnowledgeFeature,
        add_features,
        load_declarations,
        publish_feature,
        retire_feature,
    )
    from kar.features.offline import training_set
    from kar.features.online import KnowledgeBatch
    from kar.features.publishing import PublishReport, publish, push_online
    from kar.features.repo import apply_repo, feature_store, init_feature_repo, update_lineage
    from kar.features.serving import HttpReader, KnowledgeServer, OnlineKnowledge


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kar.features' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
