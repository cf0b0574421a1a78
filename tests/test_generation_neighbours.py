"""Similar users and items for the knowledge pool: text and interaction neighbours, and the
pool drafting from a neighbour's answer first."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kar.errors import ConfigError
from kar.generation.draft_pool import KnowledgePool
from kar.generation.neighbours import Neighbours
from kar.generation.speculative import SpeculativeConfig, make_draft
from kar.records import KIND_ITEM, PromptRecord


def test_text_neighbours_rank_shared_words_first() -> None:
    texts = {
        "1": "Toy Story (1995), Animation, Children's, Comedy",
        "2": "GoldenEye (1995), Action, Adventure, Thriller",
        "3": "Aladdin (1992), Animation, Children's, Comedy, Musical",
        "4": "Die Hard (1988), Action, Thriller",
        "5": "",
    }
    near = Neighbours.from_texts(texts, k=2)
    assert near("1")[0] == "3" and near("3")[0] == "1"
    assert near("2")[0] == "4" and near("4")[0] == "2"
    assert all(entity not in near(entity) for entity in texts)  # never itself
    assert all(len(near(entity)) <= 2 for entity in texts)
    assert near("5") == []  # no word in common with anything: no neighbour
    assert near("unknown") == ()
    assert Neighbours.from_texts({"a": "", "b": ""}).table == {}


def test_interaction_neighbours_users_and_items() -> None:
    ratings = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u2", "u3", "u3"],
            "item_id": ["a", "b", "c", "a", "b", "d", "x", "y"],
        }
    )
    users = Neighbours.from_interactions(ratings, "user", k=5)
    assert users("u1") == ["u2"]  # two films in common; u3 shares nothing
    assert users("u3") == []
    items = Neighbours.from_interactions(ratings, "item", k=1)
    assert items("x") == ["y"] and items("a") in (["b"], ["c"], ["d"])
    assert len(items) == 6
    with pytest.raises(ConfigError, match="item_id"):
        Neighbours.from_interactions(ratings.rename({"item_id": "film"}), "user")
    with pytest.raises(ConfigError, match="entity"):
        Neighbours.from_interactions(ratings, "film")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be"):
        Neighbours.from_interactions(ratings, "user", k=0)


def test_pool_drafts_from_a_neighbours_answer_first() -> None:
    """Two answers continue "ab" with "x", a neighbour's with "y": without neighbours the
    majority wins; with them the neighbour's answer, worth 3 votes, does."""
    prompt = PromptRecord(
        "item", "i1", KIND_ITEM, "movies", "v1", ({"role": "user", "content": "Toy Story"},)
    )
    near = Neighbours.from_texts(
        {"i1": "Toy Story animation", "i5": "Aladdin animation", "i2": "Heat crime"}
    )
    config = SpeculativeConfig(min_support=1, min_n=2, max_n=2)
    drafts = {}
    for source in (None, near):
        pool = KnowledgePool(
            encode=lambda text: [ord(c) for c in text], neighbours=source, neighbour_weight=3
        )
        for entity, answer in (("i2", "abx"), ("i3", "abx"), ("i5", "aby")):
            pool.add("movies", KIND_ITEM, entity, answer, ended=False)
        pool.register([prompt])
        drafts[source is not None] = make_draft([7, ord("a"), ord("b")], pool.route(
            prompt.messages), k=2, config=config)  # fmt: skip
    assert drafts == {False: [ord("x")], True: [ord("y")]}


def test_make_draft_prefers_the_longer_own_match() -> None:
    """Prompt lookup: a suffix found earlier in the conversation, longer than the pool's
    match, drafts what followed it there; on a tie the pool drafts."""
    pool = KnowledgePool(encode=lambda text: [ord(c) for c in text])
    pool.add("movies", KIND_ITEM, "i2", "cdz", ended=False)
    route = pool.route(({"role": "user", "content": "q"},))
    config = SpeculativeConfig(min_support=1, min_n=2, max_n=3)
    context = [ord(c) for c in "bcdefgbcd"]
    assert make_draft(context, route, k=2, config=config) == [ord("e"), ord("f")]
    tie = [ord(c) for c in "bcdefgxcd"]  # "cd" in both, no longer own match: the pool's
    assert make_draft(tie, route, k=2, config=config) == [ord("z")]
    no_lookup = SpeculativeConfig(min_support=1, min_n=2, max_n=3, prompt_lookup=False)
    assert make_draft(context, route, k=2, config=no_lookup) == [ord("z")]


def test_movielens_neighbours_share_genres(ml100k_dir: Path) -> None:
    """On MovieLens-100K, an item's text neighbours share most of its genres."""
    from kar.data import load_movielens
    from kar.prompts import Scenario, build_item_prompts

    ds = load_movielens(ml100k_dir, variant="ml-100k")
    prompts = build_item_prompts(
        ds, Scenario.load("movies"), item_ids=[str(i) for i in range(1, 201)]
    )
    near = Neighbours.from_prompts(prompts, k=5)
    genres = dict(zip(ds.items["item_id"], ds.items["genres"].to_list(), strict=True))
    shared = [
        len(set(genres[e]) & set(genres[n])) / len(set(genres[e]) | set(genres[n]))
        for e in near.table
        for n in near(e)
    ]
    assert len(near) == 200
    assert sum(shared) / len(shared) > 0.5
