"""kar: LLM knowledge augmentation for recommenders, published as Feast features.

Heavy dependencies (torch, transformers, feast) are imported lazily by the stage
that needs them, so ``import kar`` stays fast.
"""

__version__ = "0.1.0"
