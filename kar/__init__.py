"""kar: LLM knowledge augmentation for recommenders, published as Feast features.

``kar.Project(dir)`` is the object to hold: its methods are the stages
(:mod:`kar.facade`). Heavy dependencies (torch, transformers, feast) are imported lazily
by the stage that needs them, so ``import kar`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Project", "__version__"]

if TYPE_CHECKING:
    from kar.facade import Project


def __getattr__(name: str) -> Any:
    if name == "Project":
        from kar.facade import Project

        return Project
    raise AttributeError(f"module 'kar' has no attribute {name!r}")
