"""Speculative decoding from a knowledge pool for the transformers backend (DARE-style).

Each step drafts up to ``draft_tokens`` tokens per conversation from earlier answers
(:class:`~kar.generation.speculative.pool.KnowledgePool`) or from the conversation itself
(prompt lookup), and the model checks the whole draft in **one** forward pass over the
KV cache. ``mode="exact"``: a draft token is kept only while it equals the greedy choice,
so the output is the greedy output, token for token. ``mode="relaxed"``: a draft token is
kept when it is the greedy choice, or among the model's ``top_k`` choices with
probability >= ``min_prob`` (faster; the answer may differ, so the backend's
``model_name`` says so). Either way the token after the last kept draft token is the
model's greedy choice, so every step makes at least one token. Batches work: rows accept
different numbers of tokens; rejected draft slots stay in the cache, masked out, and the
common tail is cropped.

Sampled requests (``temperature > 0``) fall back to plain ``generate``.
"""

from kar.generation.speculative.backend import SpeculativeTransformersBackend
from kar.generation.speculative.config import Mode, SpeculativeConfig, SpeculativeStats
from kar.generation.speculative.pool import KnowledgePool, NgramIndex, PoolRoute
from kar.generation.speculative.tree import DraftTree

__all__ = [
    "DraftTree",
    "KnowledgePool",
    "Mode",
    "NgramIndex",
    "PoolRoute",
    "SpeculativeConfig",
    "SpeculativeStats",
    "SpeculativeTransformersBackend",
]
