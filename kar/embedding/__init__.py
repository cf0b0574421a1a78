"""Embedding stage: LLM / encoder item embeddings, collaborative tuning, SAID, a user tower,
SASRec (on IDs, text vectors or both), and vector-indexed Feast views for i2i / u2i
retrieval and cold start (docs/embedding.md). A stage of the project:
``kar.Project.embed()`` / ``embed_tune()`` / ``embed_said()`` / ``embed_users()``, set in
kar.yaml's ``embedding:`` section.

Importing this package does not import torch, transformers or feast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ItemEmbedder": "kar.embedding.embedder",
    "ITEM_TOKEN": "kar.embedding.embedder",
    "token_pool": "kar.embedding.embedder",
    "item_text": "kar.embedding.text",
    "item_texts": "kar.embedding.text",
    "cooccurrence_pairs": "kar.embedding.cooccur",
    "training_interactions": "kar.embedding.cooccur",
    "TuneConfig": "kar.embedding.tune",
    "tune_embeddings": "kar.embedding.tune",
    "load_tuned": "kar.embedding.tune",
    "SAIDConfig": "kar.embedding.said",
    "fit_said": "kar.embedding.said",
    "train_said": "kar.embedding.said",
    "SASRecConfig": "kar.embedding.sasrec",
    "SASRec": "kar.embedding.sasrec",
    "train_sasrec": "kar.embedding.sasrec",
    "sasrec_scorer": "kar.embedding.sasrec",
    "TowerConfig": "kar.embedding.tower",
    "UserTower": "kar.embedding.tower",
    "train_user_tower": "kar.embedding.tower",
    "next_item_events": "kar.embedding.evaluate",
    "init_embedding_repo": "kar.embedding.feast_repo",
    "publish_embeddings": "kar.embedding.feast_repo",
    "similar_items": "kar.embedding.feast_repo",
    "recommend_items": "kar.embedding.feast_repo",
    "nearest_items": "kar.embedding.feast_repo",
    "EmbeddingSettings": "kar.embedding.config",
    "LegacySettingsWarning": "kar.embedding.config",
    "EmbeddingPaths": "kar.embedding.stage",
    "EmbeddingReport": "kar.embedding.stage",
    "run_embed": "kar.embedding.stage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kar.embedding' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
