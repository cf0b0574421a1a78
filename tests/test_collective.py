"""Collective (REKI-style) knowledge: clustering, cluster prompts, member mapping, and a
demo project generated in collective mode with the real SmolLM2 and MiniLM."""

from __future__ import annotations

import polars as pl
import pytest

from kar.collective import cluster_entities, member_answers
from kar.errors import ConfigError
from kar.prompts import Scenario
from kar.prompts.collective import build_cluster_prompts, cluster_entity_id, is_cluster_id


def _interactions() -> pl.DataFrame:
    # two taste groups: users a* watch items 1-3, users b* watch items 7-9
    rows = [(u, i) for u in ("a1", "a2", "a3") for i in ("1", "2", "3")]
    rows += [(u, i) for u in ("b1", "b2", "b3") for i in ("7", "8", "9")]
    return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Utf8}, orient="row")


def test_clusters_follow_collaborative_signal() -> None:
    c = cluster_entities(_interactions(), n_components=2, user_clusters=2, item_clusters=2)
    users, items = c.members("user"), c.members("item")
    assert sorted(users.values()) == [["a1", "a2", "a3"], ["b1", "b2", "b3"]]
    assert sorted(items.values()) == [["1", "2", "3"], ["7", "8", "9"]]
    again = cluster_entities(_interactions(), n_components=2, user_clusters=2, item_clusters=2)
    assert again.clustering == c.clustering and again.membership.equals(c.membership)
    capped = cluster_entities(_interactions(), user_clusters=50, item_clusters=50)
    assert capped.n_clusters("user") <= 6 and capped.n_clusters("item") <= 6


def test_clusters_on_movielens(ml100k_dir) -> None:
    from kar.data import load_movielens

    ds = load_movielens(ml100k_dir)
    c = cluster_entities(ds.interactions, n_components=16, user_clusters=20, item_clusters=30)
    assert c.n_clusters("user") == 20 and c.n_clusters("item") == 30
    n_users = ds.interactions["user_id"].n_unique()
    assert c.membership.filter(pl.col("entity_type") == "user").height == n_users
    scenario = Scenario.load("movies")
    prompts = build_cluster_prompts(ds.interactions, ds.items, scenario, c.membership, c.clustering)
    assert len(prompts) == 50 and all(is_cluster_id(p.entity_id) for p in prompts)
    assert {p.prompt_version for p in prompts} == {scenario.collective_version}
    user_q = next(p for p in prompts if p.entity_type == "user").messages[1]["content"]
    assert "These users" in user_q and "watched by" in user_q and "genre" in user_q
    item_q = next(p for p in prompts if p.entity_type == "item").messages[1]["content"]
    assert "These movies have in common" in item_q


def test_bad_collective_template_names_the_field(tmp_path) -> None:
    text = (Scenario.load("movies").source.read_text()).replace(
        "{{ members_text }}", "{{ no_such_variable }}"
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="collective.item_template"):
        Scenario.load(path)


def _answers(rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema=["entity_type", "entity_id", "answer", "context_text"], orient="row"
    )


def test_member_answers_per_mode() -> None:
    c = cluster_entities(_interactions(), n_components=2, user_clusters=2, item_clusters=2)
    cid = {(t, e): cluster_entity_id(c.clustering, k) for t, e, k in c.membership.iter_rows()}
    answers = _answers(
        [
            ("user", cid[("user", "a1")], "group A likes classics", "ctxA"),
            ("user", cid[("user", "b1")], "group B likes horror", "ctxB"),
            ("item", cid[("item", "1")], "items 1-3 are classics", ""),
            ("item", cid[("item", "7")], "items 7-9 are horror", ""),
            ("user", "a1", "a1 alone", "a1 history"),
            ("item", "1", "item 1 facts", "item 1"),
            ("item", "42", "cold-start item facts", "item 42"),
        ]
    )
    contexts = pl.DataFrame(
        {
            "entity_type": ["user"] * 6,
            "entity_id": ["a1", "a2", "a3", "b1", "b2", "b3"],
            "context_text": [f"{u} history" for u in ["a1", "a2", "a3", "b1", "b2", "b3"]],
        }
    )
    out = member_answers(
        answers, c.membership, c.clustering, {"user": "collective", "item": "both"}, contexts
    )
    users = {r["entity_id"]: r for r in out.filter(pl.col("entity_type") == "user").to_dicts()}
    assert sorted(users) == ["a1", "a2", "a3", "b1", "b2", "b3"]  # every member, no cluster row
    for u, row in users.items():
        group = "A" if u.startswith("a") else "B"
        assert row["answer"].startswith(f"group {group}")
        assert row["context_text"] == f"{u} history"  # the member's own history
        assert row["knowledge_source"] == cid[("user", u)]
    items = {
        r["entity_id"]: r["answer"] for r in out.filter(pl.col("entity_type") == "item").to_dicts()
    }
    assert items["1"] == "item 1 facts\nShared with similar items: items 1-3 are classics"
    assert items["42"] == "cold-start item facts"  # no cluster: its own answer
    plain = member_answers(answers, None, None, {"user": "individual", "item": "individual"})
    assert sorted(plain["entity_id"].to_list()) == ["1", "42", "a1"]
    with pytest.raises(Exception, match="clustering"):
        member_answers(answers, None, None, {"user": "collective"})


@pytest.mark.slow
def test_collective_project_makes_far_fewer_llm_calls(tmp_path) -> None:
    """Real SmolLM2 (16 tokens) + MiniLM on a demo project in collective mode."""
    import torch

    from kar.collective.project import load_clustering
    from kar.generation import KnowledgeStore
    from kar.pipeline import build_prompts, init_project, load_data, run_encode, run_generate
    from kar.project import ProjectFolder

    torch.set_num_threads(1)
    project = init_project(tmp_path / "p", n_users=40)
    gen = project.settings.generation
    gen.max_new_tokens_user = gen.max_new_tokens_item = 16
    gen.truncated, gen.max_retries = "accept", 0
    gen.collective.user = gen.collective.item = "collective"
    gen.collective.user_clusters, gen.collective.item_clusters = 3, 4
    project.save()
    project = ProjectFolder.load(project.root)

    dataset, split = load_data(project)
    individual_calls = len(build_prompts(project, dataset, split))
    reports = run_generate(project, progress=False)
    calls = sum(r.llm_calls for r in reports.values())
    assert calls == 3 + 4
    assert individual_calls >= 10 * calls  # the reduction factor collective mode buys

    membership, clustering, _ = load_clustering(project)
    answers = KnowledgeStore(project.knowledge_store_url).answers(scenario="demo")
    assert answers.height == calls and all(is_cluster_id(e) for e in answers["entity_id"])
    by_cluster = {(r["entity_type"], r["entity_id"]): r["answer"] for r in answers.to_dicts()}

    vectors = run_encode(project, progress=False)
    users = set(split.history["user_id"].to_list())
    assert set(vectors.users["entity_id"].to_list()) == users  # member-level, no cluster rows
    from kar.collective.project import member_knowledge

    members = member_knowledge(project, answers)
    for row in members.iter_rows(named=True):
        assert row["answer"] == by_cluster[(row["entity_type"], row["knowledge_source"])]
    assert members.height == membership.height  # every member mapped to its cluster
    assert vectors.dim == 384
