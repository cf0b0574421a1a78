"""`kar refresh` runs the pipeline's own stages on a subset: collective knowledge (members
get their cluster's answer, a cluster is asked again only when its question changed) and
imported texts work as in a full run. Real SmolLM2, MiniLM, adaptor, Feast and SQLite."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from kar.project import ProjectFolder
from kar.refresh import knowledge_time, refresh

pytestmark = pytest.mark.slow

IMPORTED = "f004"


@pytest.fixture(scope="module")
def collective_project(tmp_path_factory) -> Path:
    """A demo project with collective user knowledge (3 clusters), individual item facts
    and one imported item text; generated, encoded, trained and published."""
    import torch

    from kar.pipeline import (
        import_knowledge,
        init_project,
        run_encode,
        run_generate,
        run_publish,
        run_train,
    )

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("refresh-stages") / "base"
    project = init_project(root, n_users=10)
    gen = project.settings.generation
    gen.max_new_tokens_user = gen.max_new_tokens_item = 16
    gen.backend, gen.truncated, gen.max_retries = "transformers", "accept", 0
    gen.collective.user, gen.collective.user_clusters = "collective", 3
    project.save()
    project = ProjectFolder.load(root)
    texts = _texts(root / "texts.csv", "A grim northern thriller.")
    import_knowledge(project, texts, source="mine")
    reports = run_generate(project, limit=5, progress=False)
    assert reports["user_preference"].llm_calls == 3  # one question per user cluster
    run_encode(project, progress=False)
    run_train(project, progress=False)
    run_publish(project)
    return root


def _texts(path: Path, text: str) -> Path:
    pl.DataFrame({"entity_id": [IMPORTED], "kind": ["item"], "text": [text]}).write_csv(path)
    return path


def _copy(base: Path, tmp_path: Path) -> ProjectFolder:
    from kar.features import apply_repo

    dest = tmp_path / "project"
    shutil.copytree(base, dest)
    apply_repo(dest / "feature_repo")  # the registry holds absolute source paths: re-point
    return ProjectFolder.load(dest)


def _append_events(project: ProjectFolder, user: str, start: datetime, n: int) -> datetime:
    with open(project.root / "data" / "interactions.csv", "a") as f:
        for i in range(n):
            ts = start + timedelta(hours=i)
            f.write(f"{user},f{107 + i * 7:03d},{ts:%Y-%m-%dT%H:%M:%SZ},5\n")
    return start + timedelta(hours=n - 1)


def _adapted(project: ProjectFolder, entity_type: str, answer: str, context: str) -> list[float]:
    """The vector a full run would publish for one entity with this answer and context."""
    from kar.adaptor import TrainedAdaptor
    from kar.encoding import encode_knowledge
    from kar.pipeline import make_encoder

    row = pl.DataFrame(
        {"entity_type": [entity_type], "entity_id": ["x"], "answer": [answer],
         "context_text": [context]}
    )  # fmt: skip
    encoded = encode_knowledge(row, make_encoder(project))
    users, items = TrainedAdaptor.load(project.adaptor_dir).export(encoded.users, encoded.items)
    return (users if entity_type == "user" else items)["vector"][0].to_list()


def _offline(project: ProjectFolder, view: str, key: str, entity: str) -> pl.DataFrame:
    rows = pl.read_parquet(project.feature_repo / "data" / view / "*.parquet")
    return rows.filter(pl.col(key) == entity).sort("event_timestamp")


def _cluster_rows(project: ProjectFolder) -> pl.DataFrame:
    from kar.generation import KnowledgeStore
    from kar.prompts.collective import CLUSTER_PREFIX

    answers = KnowledgeStore(project.knowledge_store_url).answers(status=None)
    return answers.filter(pl.col("entity_id").str.starts_with(CLUSTER_PREFIX))


def _user_with_even_count(project: ProjectFolder, members: list[str], even: bool) -> str:
    """A cluster member whose interaction count is even (with the default history fraction
    0.5 one more event leaves its history split, hence its cluster's question, unchanged)
    or odd (one more event may grow it)."""
    from kar.pipeline import load_data

    dataset, _ = load_data(project)
    counts = dataset.interactions.group_by("user_id").len()
    for user, n in counts.sort("user_id").iter_rows():
        if user in members and n >= 2 and (n % 2 == 0) == even:
            return user
    pytest.skip(f"no cluster member with an {'even' if even else 'odd'} interaction count")


def test_refresh_gives_members_their_clusters_answer(
    collective_project: Path, tmp_path: Path
) -> None:
    from kar.collective.project import load_clustering
    from kar.features import OnlineKnowledge
    from kar.generation import KnowledgeStore
    from kar.pipeline import load_data, load_scenario
    from kar.prompts import build_user_prompts

    project = _copy(collective_project, tmp_path)
    assert refresh(project).bootstrap
    membership, _, contexts_before = load_clustering(project)
    users = membership.filter(pl.col("entity_type") == "user")
    source = dict(users.select("entity_id", "knowledge_source").iter_rows())
    store = KnowledgeStore(project.knowledge_store_url)
    clusters_before = _cluster_rows(project)

    # one more event, history split unchanged: the cluster's question is the same one
    user = _user_with_even_count(project, sorted(source), even=True)
    last = _append_events(project, user, datetime(2030, 1, 1, tzinfo=UTC), n=1)
    count_before = store.count()
    report = refresh(project)
    assert (report.users, report.items, report.llm_calls) == (1, 0, 0)
    assert store.count() == count_before  # no individual question, no cluster asked again
    assert report.sources == {"user": {source[user]: 1}}  # lineage: the cluster's answer
    cluster_answer = clusters_before.filter(pl.col("entity_id") == source[user])["answer"][0]
    dataset, _ = load_data(project)
    prompt = build_user_prompts(dataset, load_scenario(project), knowledge_time(last), [user])[0]
    expected = _adapted(project, "user", cluster_answer, prompt.context_text)
    rows = _offline(project, "user_knowledge", "user_id", user)
    assert rows["event_timestamp"][-1] == knowledge_time(last)
    assert rows["user_knowledge_vector"][-1].to_list() == pytest.approx(expected, abs=1e-5)
    assert rows["user_knowledge_vector"][0].to_list() != pytest.approx(expected, abs=1e-5)
    online = OnlineKnowledge(project.feature_repo).get(user, [])
    assert online.user.tolist() == pytest.approx(expected, abs=1e-5)
    _, _, contexts = load_clustering(project)  # the member's new context, for `kar encode`
    mine = (pl.col("entity_type") == "user") & (pl.col("entity_id") == user)
    assert contexts.filter(mine)["context_text"].to_list() == [prompt.context_text]
    assert contexts_before.filter(mine)["context_text"][0] != prompt.context_text
    assert contexts.height == contexts_before.height

    # a member whose history split grows: only its own cluster may be asked again
    other = _user_with_even_count(project, sorted(set(source) - {user}), even=False)
    _append_events(project, other, datetime(2030, 2, 1, tzinfo=UTC), n=1)
    again = refresh(project)
    new = _cluster_rows(project).join(clusters_before, on=["entity_id", "prompt_hash"], how="anti")
    assert again.llm_calls == new.height <= 1
    assert set(new["entity_id"].to_list()) <= {source[other]}  # unchanged clusters: 0 calls
    assert again.sources == {"user": {source[other]: 1}}
    assert refresh(project).llm_calls == 0  # nothing new: nothing asked, nothing written


def test_refresh_keeps_imported_texts(collective_project: Path, tmp_path: Path) -> None:
    from kar.generation import KnowledgeStore
    from kar.pipeline import import_knowledge

    project = _copy(collective_project, tmp_path)
    assert refresh(project).bootstrap
    text = "A grim northern thriller, told in winter."
    import_knowledge(project, _texts(tmp_path / "again.csv", text), source="mine")
    with open(project.root / "data" / "items.csv", "a") as f:
        f.write("f999,A Film New To The Catalog,2031,Drama,Some Director\n")
    report = refresh(project)
    assert (report.users, report.items) == (0, 2)  # the re-imported item + the new f999
    assert report.llm_calls == 1  # f999 asked of the LLM, the imported item not
    assert report.sources["item"]["import:mine"] == 1
    answers = KnowledgeStore(project.knowledge_store_url).answers(scenario="demo")
    row = answers.filter(pl.col("entity_id") == IMPORTED).row(0, named=True)
    assert row["answer"] == text and row["model"] == "import:mine"
    expected = _adapted(project, "item", text, row["context_text"])
    rows = _offline(project, "item_knowledge", "item_id", IMPORTED)
    assert rows.height == 2  # the published one, then the refreshed one
    assert rows["item_knowledge_vector"][-1].to_list() == pytest.approx(expected, abs=1e-5)
    assert _offline(project, "item_knowledge", "item_id", "f999").height == 1
