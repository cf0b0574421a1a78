"""Encoding stage: knowledge answers -> text encoder (pooled, cached) -> entity vectors.

Importing this package does not import torch or transformers; the encoder loads them
when it first encodes.
"""

from kar.encoding.cache import VectorCache, text_hash
from kar.encoding.encoder import EncodeStats, TextEncoder, default_model_dir
from kar.encoding.knowledge import encode_knowledge, knowledge_text
from kar.encoding.pooling import POOLINGS, Pooling
from kar.encoding.vectors import EntityVectors

__all__ = [
    "POOLINGS",
    "EncodeStats",
    "EntityVectors",
    "Pooling",
    "TextEncoder",
    "VectorCache",
    "default_model_dir",
    "encode_knowledge",
    "knowledge_text",
    "text_hash",
]
