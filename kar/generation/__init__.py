"""Generation stage: LLM backends, the knowledge store and the resumable runner.

Importing this package is cheap: torch and transformers load only when a
:class:`TransformersBackend` is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kar.generation.backend import ChatMessages, GenerationBackend
from kar.generation.model_files import (
    bundled_model_dir,
    cache_dir,
    model_name_for,
    resolve_model,
)
from kar.generation.quality import check_answer
from kar.generation.runner import GenerationReport, generate_knowledge, retry_params
from kar.generation.store import KnowledgeStore, call_key

if TYPE_CHECKING:
    from kar.generation.openai_backend import OpenAIBackend
    from kar.generation.speculative import SpeculativeConfig, SpeculativeTransformersBackend
    from kar.generation.transformers_backend import TransformersBackend

__all__ = [
    "ChatMessages",
    "GenerationBackend",
    "GenerationReport",
    "KnowledgeStore",
    "OpenAIBackend",
    "SpeculativeConfig",
    "SpeculativeTransformersBackend",
    "TransformersBackend",
    "bundled_model_dir",
    "cache_dir",
    "call_key",
    "check_answer",
    "generate_knowledge",
    "model_name_for",
    "resolve_model",
    "retry_params",
]


def __getattr__(name: str) -> Any:
    if name == "TransformersBackend":
        from kar.generation.transformers_backend import TransformersBackend

        return TransformersBackend
    if name == "OpenAIBackend":
        from kar.generation.openai_backend import OpenAIBackend

        return OpenAIBackend
    if name in ("SpeculativeConfig", "SpeculativeTransformersBackend"):
        from kar.generation import speculative

        return getattr(speculative, name)
    raise AttributeError(f"module 'kar.generation' has no attribute {name!r}")
