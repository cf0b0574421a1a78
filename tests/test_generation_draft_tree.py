"""Draft trees: several pool continuations checked in one verification pass.

The trie of continuations, the tree attention mask, the acceptance walk and the cache
compaction on their own (with the real SmolLM2 in tests/test_generation_speculative.py)."""

from __future__ import annotations

import pytest

from kar.generation.speculative import DraftTree, NgramIndex, PoolRoute, SpeculativeConfig
from kar.generation.speculative.decode import (
    accept_path,
    compact_step_cache,
    tree_attention_mask,
)
from kar.generation.speculative.drafts import make_draft, make_draft_tree
from kar.generation.speculative.pool import continuation_tree


def test_tree_keeps_the_heaviest_continuations_of_every_way() -> None:
    index = NgramIndex(min_n=2, max_n=2)
    index.add([1, 2, 3, 4, 5], "a")
    index.add([1, 2, 3, 4, 6], "b")
    index.add([1, 2, 7, 8, 9], "c")
    tree = index.draft_tree([1, 2], k=5)
    # weights: 3 (2 votes) 4 (2) then 7, 8, 5 (1 each; shallower first, then earlier)
    assert tree.tokens == [3, 4, 7, 8, 5]
    assert tree.parents == [-1, 0, -1, 2, 1]
    assert tree.depths() == [1, 2, 1, 2, 3]
    assert tree.follow([7, 8, 9]) == [2, 3]
    assert tree.follow([3, 4, 6]) == [0, 1]
    # a chain of the majority is what the one-draft walk gives
    assert index.draft([1, 2], k=2) == [3, 4]
    # a node below depth 1 needs min_support votes (8, under 7, has one)
    assert index.draft_tree([1, 2], k=5, min_support=2).tokens == [3, 4, 7]
    assert index.draft_tree([5, 5], k=5) == DraftTree()  # no match
    assert index.draft_tree([1, 2], k=0) == DraftTree()


def test_tree_never_crosses_documents() -> None:
    tokens = [1, 2, 3, -1, 1, 2, 4, 5, -1]
    tree = continuation_tree(tokens, [1, 5], k=4)
    assert tree.tokens == [3, 4, 5]  # a tie: shallower first, then earlier; SEP ends a way
    assert tree.parents == [-1, -1, 1]


def test_merge_shares_paths_and_respects_the_limit() -> None:
    tree = DraftTree.chain([5, 6, 7])
    assert tree.parents == [-1, 0, 1]
    other = DraftTree([5, 9, 8, 4], [-1, 0, -1, 2])
    tree.merge(other, limit=5)
    assert tree.tokens == [5, 6, 7, 9, 8]  # 5 shared; 4 (under 8) over the limit
    assert tree.parents == [-1, 0, 1, 0, -1]
    assert tree.path(2) == [0, 1, 2] and tree.path(3) == [0, 3]
    assert tree.children() == {-1: [0, 4], 0: [1, 3], 1: [2], 2: [], 3: [], 4: []}
    with pytest.raises(ValueError, match="no node 9"):
        tree.add(9, 1)


def test_accept_path_follows_greedy_then_relaxed_choices() -> None:
    # root -> 5 -> 6 ; root -> 8 -> 9
    tree = DraftTree([5, 6, 8, 9], [-1, 0, -1, 2])
    columns = 1 + len(tree)  # column 0: the last token; node n: column n + 1
    best = [8, 0, 0, 9, 0]
    assert len(best) == columns
    assert accept_path(tree, best) == [2, 3]  # the second branch, then its child
    assert accept_path(tree, [7, 0, 0, 0, 0]) == []
    near = [{5: 0.3, 8: 0.2}] + [{}] * 4
    assert accept_path(tree, [7, 6, 0, 0, 0], near) == [0, 1]  # likelier of the close ones
    assert accept_path(tree, [8, 6, 0, 0, 0], near) == [2]  # greedy beats close


def test_tree_attention_mask_shows_each_node_its_own_path() -> None:
    import torch

    past = torch.tensor([[0, 1, 1], [1, 1, 1]])
    trees = [DraftTree([5, 6, 8], [-1, 0, -1]), DraftTree()]
    mask = tree_attention_mask(past, trees, width=4)
    assert mask.shape == (2, 1, 4, 7) and mask.dtype == torch.bool
    new = mask[0, 0, :, 3:].int().tolist()
    assert new == [
        [1, 0, 0, 0],  # the last token: itself
        [1, 1, 0, 0],  # node 0 (5)
        [1, 1, 1, 0],  # node 1 (6 under 5)
        [1, 0, 0, 1],  # node 2 (8): not 5's branch
    ]
    assert mask[0, 0, :, :3].int().tolist() == [[0, 1, 1]] * 4  # padding stays hidden
    assert mask[1, 0, :, 3:].int().tolist() == [
        [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
    ]  # fmt: skip


def test_compact_step_cache_moves_kept_columns_first() -> None:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    keys = torch.arange(2 * 1 * 6 * 2, dtype=torch.float32).reshape(2, 1, 6, 2)
    cache.update(keys.clone(), -keys.clone(), layer_idx=0)
    compact_step_cache(cache, [[0, 2, 3], [0]], width=4)  # the last 4 positions
    got = cache.layers[0].keys
    assert torch.equal(got[:, :, :2], keys[:, :, :2])  # before the step: untouched
    assert torch.equal(got[0, 0, 2:5], keys[0, 0, [2, 4, 5]])
    assert torch.equal(got[1, 0, 2], keys[1, 0, 2])
    assert torch.equal(cache.layers[0].values, -got)


def test_make_draft_tree_merges_prompt_lookup_with_the_pool() -> None:
    index = NgramIndex(min_n=2, max_n=4)
    index.add([1, 2, 3, 4], "a")
    index.add([1, 2, 5, 6], "b")
    route = PoolRoute(index)
    config = SpeculativeConfig(min_support=1)
    # the pool matches (1, 2) with two ways; the context itself has no earlier (1, 2)
    tree = make_draft_tree([9, 1, 2], route, k=4, config=config)
    assert tree.tokens == [3, 5, 4, 6]
    assert make_draft([9, 1, 2], route, k=4, config=config) == [3, 4]
    assert make_draft_tree([9, 1, 2], route, 4, SpeculativeConfig(min_support=2)).tokens == [3, 5]
    # the conversation's own longer match goes first, the pool fills what is left
    own = [7, 1, 2, 8, 0, 7, 1, 2]
    tree = make_draft_tree(own, route, k=3, config=config)
    assert tree.tokens[:3] == [8, 0, 7] and tree.parents[:3] == [-1, 0, 1]
