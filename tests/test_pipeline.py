"""End to end on a small demo project through ``kar.Project``'s methods: the real SmolLM2,
MiniLM, adaptor training and Feast."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import kar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> kar.Project:
    created = kar.Project.init(tmp_path_factory.mktemp("demo"), n_users=16)
    gen = created.settings.generation
    gen.max_new_tokens_user = gen.max_new_tokens_item = 24
    created.settings.training.eval_seeds = [0]
    created.folder.save()
    return kar.Project(created.root)  # what the CLI would read back


@pytest.fixture(scope="module")
def generated(project):
    return project.generate(limit=6, progress=False)


def test_generate_answers_each_prompt_once_and_resumes(project, generated) -> None:
    assert {r.total for r in generated.values()} == {6}
    assert all(r.llm_calls >= 6 for r in generated.values())
    answers = project.store.answers(status=None)
    assert answers.group_by("entity_type").len().sort("entity_type")["len"].to_list() == [6, 6]
    dtype = project.settings.generation.dtype  # auto: the machine's (kar.generation.precision)
    assert set(answers["model"]) == {f"smollm2-135m-instruct@{dtype}"}
    rerun = project.generate(limit=6, progress=False)
    assert [r.llm_calls for r in rerun.values()] == [0, 0]
    items_only = project.generate(limit=6, kinds={"item_fact"}, progress=False)
    assert list(items_only) == ["item_fact"] and items_only["item_fact"].total == 6


@pytest.fixture(scope="module")
def trained(project, generated):
    return project.encode(progress=False), project.train(progress=False)


def test_encode_and_train_export_one_vector_per_entity(project, trained) -> None:
    project = project.folder
    vectors, result = trained
    assert vectors.dim == 384 and 0 < vectors.users.height <= 6
    users = pl.read_parquet(project.knowledge_dir / "user_knowledge.parquet")
    items = pl.read_parquet(project.knowledge_dir / "item_knowledge.parquet")
    assert users["entity_id"].to_list() == vectors.users["entity_id"].to_list()
    assert items.height == vectors.items.height
    assert {len(v) for v in users["vector"]} == {32}
    assert 0.0 <= result.valid_auc <= 1.0
    config = json.loads((project.adaptor_dir / "config.json").read_text())
    assert config["adaptor"]["type"] == "hea" and config["encoder"] == vectors.encoder_id


def test_publish_then_read_back_online_and_offline(project: kar.Project, trained) -> None:
    from kar.features import OnlineKnowledge, list_knowledge_views

    report = project.publish()
    split = project.split
    project = project.folder
    users = pl.read_parquet(project.knowledge_dir / "user_knowledge.parquet")
    items = pl.read_parquet(project.knowledge_dir / "item_knowledge.parquet")
    assert (report.users, report.items) == (users.height, items.height)

    views = {v["name"]: v for v in list_knowledge_views(project.feature_repo)}
    assert set(views) >= {"user_knowledge", "item_knowledge"}
    dtype = project.settings.generation.dtype
    assert views["user_knowledge"]["tags"]["kar.llm"] == f"smollm2-135m-instruct@{dtype}"

    user_id = users["entity_id"][0]
    item_ids = [items["entity_id"][1], "no-such-item", items["entity_id"][0]]
    batch = OnlineKnowledge(project.feature_repo).get(user_id, item_ids)
    served = kar.Project(project.root).online().get(user_id, item_ids)  # the cached reader
    np.testing.assert_array_equal(served.items, batch.items)
    np.testing.assert_array_equal(served.item_codes, batch.item_codes)
    np.testing.assert_allclose(batch.user, np.asarray(users["vector"][0]), rtol=1e-6)
    np.testing.assert_allclose(batch.items[0], np.asarray(items["vector"][1]), rtol=1e-6)
    assert batch.items_missing.tolist() == [False, True, False]
    assert not batch.items[1].any()

    rows = split.test.select("user_id", "item_id", pl.col("timestamp").alias("event_timestamp"))
    frame = kar.Project(project.root).training_set(rows)
    assert frame.height == rows.height
    with_knowledge = frame.filter(pl.col("user_id").is_in(users["entity_id"].to_list()))
    # every CTR row comes after the user's as-of instant, so the vector is visible
    assert with_knowledge["user_knowledge_vector"].null_count() == 0

    # discrete knowledge codes (features.codebook_size, default 64) beside the vectors
    from kar.adaptor.codes import CODEBOOK_FILE, KnowledgeCodebooks

    books = KnowledgeCodebooks.load(project.knowledge_dir / CODEBOOK_FILE)
    user_codes = books.with_codes("user", users)
    item_codes = books.with_codes("item", items)
    assert views["item_knowledge"]["tags"]["kar.codebook"].startswith("k64-")
    assert batch.user_code == user_codes["code"][0] >= 1
    assert batch.item_codes.tolist() == [item_codes["code"][1], 0, item_codes["code"][0]]
    expected = with_knowledge.join(
        user_codes.select(pl.col("entity_id").alias("user_id"), "code"), on="user_id"
    )
    assert expected["user_knowledge_code"].to_list() == expected["code"].to_list()


def test_evaluate_writes_table_and_plot(project, trained) -> None:
    from kar.pipeline import TIMINGS_FILE

    report = project.evaluate(progress=False)
    summary, md, png = report  # also a named tuple: report.summary / .markdown / .plot
    assert (report.markdown, report.plot) == (md, png)
    table = md.read_text()
    for name in ("baseline_lr", "deepfm", "din"):
        assert f"| {name} |" in table
    assert png.exists() and png.stat().st_size > 1000
    assert set(summary["backbone"]) == {"baseline_lr", "deepfm", "din"}
    timings = json.loads((project.folder.artifacts / TIMINGS_FILE).read_text())
    assert {"generate", "encode", "train", "evaluate"} <= set(timings)


def test_refresh_through_the_project_starts_a_watermark(project, trained) -> None:
    report = project.refresh()
    assert report.bootstrap and report.llm_calls == 0  # the first refresh only records
    again = project.refresh()
    assert not again.bootstrap and (again.users, again.items) == (0, 0)
