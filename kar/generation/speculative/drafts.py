"""One step's draft: from the pool of earlier answers or from the conversation itself
(prompt lookup), as a chain (:func:`make_draft`) or a tree (:func:`make_draft_tree`)."""

from __future__ import annotations

from kar.generation.speculative.config import SpeculativeConfig
from kar.generation.speculative.pool import PoolRoute
from kar.generation.speculative.tree import DraftTree


def make_draft(
    context: list[int], route: PoolRoute, k: int, config: SpeculativeConfig
) -> list[int]:
    """Up to ``k`` draft tokens after ``context``: from the conversation itself (prompt
    lookup) when its match is longer, else from the pool ``route`` points to."""
    pool_n, own_n, own = _matches(context, route, k, config)
    if own_n > pool_n:
        return own
    if pool_n and (index := route.index) is not None:
        return index.draft(
            context, k, route.prefer, config.min_support, config.min_share, route.skip_doc
        )
    return []


def make_draft_tree(
    context: list[int], route: PoolRoute, k: int, config: SpeculativeConfig
) -> DraftTree:
    """Up to ``k`` draft tokens after ``context`` as a tree (``config.draft_tree``): the
    heaviest continuations in the pool ``route`` points to, merged with the conversation's
    own continuation (prompt lookup), the longer match's nodes first."""
    pool_n, own_n, own_tokens = _matches(context, route, k, config)
    own = DraftTree.chain(own_tokens) if own_n else DraftTree()
    pool = DraftTree()
    if pool_n and (index := route.index) is not None:
        pool = index.draft_tree(context, k, route.prefer, config.min_support, route.skip_doc)
    first, second = (own, pool) if own_n > pool_n else (pool, own)
    return first.merge(second, k)


def _matches(
    context: list[int], route: PoolRoute, k: int, config: SpeculativeConfig
) -> tuple[int, int, list[int]]:
    """(pool match length, prompt-lookup match length, the ``k`` tokens after the
    conversation's own earlier occurrence of its suffix)."""
    index = route.index
    pool_n, _ = index.matches(context, route.skip_doc) if index is not None else (0, [])
    own_n, own_end = (
        prompt_lookup_match(context, config.min_n, config.max_n)
        if config.prompt_lookup
        else (0, -1)
    )
    return pool_n, own_n, context[own_end + 1 : own_end + 1 + k] if own_n else []


def prompt_lookup_match(context: list[int], min_n: int, max_n: int) -> tuple[int, int]:
    """Longest suffix (``min_n..max_n`` tokens) of ``context`` seen earlier in it:
    ``(n, end position of the latest earlier occurrence)``, or ``(0, -1)``."""
    size = len(context)
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        tail = context[size - n :]
        first = tail[0]
        for end in range(size - 2, n - 2, -1):
            if (
                context[end] == tail[-1]
                and context[end - n + 1] == first
                and context[end - n + 1 : end + 1] == tail
            ):
                return n, end
    return 0, -1
