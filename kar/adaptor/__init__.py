"""The knowledge adaptor: compresses raw knowledge encodings into small CTR-aligned vectors.

``AdaptorConfig`` is light; the torch modules load on first use.
"""

from __future__ import annotations

from typing import Any

from kar.adaptor.config import AdaptorConfig

__all__ = [
    "AdaptorConfig",
    "HybridExpertAdaptor",
    "MLPAdaptor",
    "MoEAdaptor",
    "TrainedAdaptor",
    "build_adaptor",
    *("KnowledgeInput", "build_module", "load_module", "vector_table"),  # joint path: module.py
]


def __getattr__(name: str) -> Any:
    if name in {"HybridExpertAdaptor", "MLPAdaptor", "MoEAdaptor", "build_adaptor"}:
        from kar.adaptor import experts

        return getattr(experts, name)
    if name == "TrainedAdaptor":
        from kar.adaptor.trained import TrainedAdaptor

        return TrainedAdaptor
    if name in {"KnowledgeInput", "build_module", "load_module", "vector_table"}:
        from kar.adaptor import module

        return getattr(module, name)
    raise AttributeError(name)
