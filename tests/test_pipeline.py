"""End to end on a small demo project: the real SmolLM2, MiniLM, adaptor training and Feast."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from kar.project import Project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    from kar.pipeline import init_project

    project = init_project(tmp_path_factory.mktemp("demo"), n_users=16)
    gen = project.settings.generation
    gen.max_new_tokens_user = gen.max_new_tokens_item = 24
    project.settings.training.eval_seeds = [0]
    project.save()
    return Project.load(project.root)  # what the CLI would read back


@pytest.fixture(scope="module")
def generated(project):
    from kar.pipeline import run_generate

    return run_generate(project, limit=6, progress=False)


def test_generate_answers_each_prompt_once_and_resumes(project, generated) -> None:
    from kar.generation import KnowledgeStore
    from kar.pipeline import run_generate

    assert {r.total for r in generated.values()} == {6}
    assert all(r.llm_calls >= 6 for r in generated.values())
    answers = KnowledgeStore(project.knowledge_store_url).answers(status=None)
    assert answers.group_by("entity_type").len().sort("entity_type")["len"].to_list() == [6, 6]
    assert set(answers["model"]) == {"smollm2-135m-instruct@bfloat16"}
    rerun = run_generate(project, limit=6, progress=False)
    assert [r.llm_calls for r in rerun.values()] == [0, 0]
    items_only = run_generate(project, limit=6, kinds={"item_fact"}, progress=False)
    assert list(items_only) == ["item_fact"] and items_only["item_fact"].total == 6


@pytest.fixture(scope="module")
def trained(project, generated):
    from kar.pipeline import run_encode, run_train

    vectors = run_encode(project, progress=False)
    result = run_train(project, progress=False)
    return vectors, result


def test_encode_and_train_export_one_vector_per_entity(project, trained) -> None:
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


def test_publish_then_read_back_online_and_offline(project, trained) -> None:
    from kar.features import OnlineKnowledge, list_knowledge_views, training_set
    from kar.pipeline import load_data, run_publish

    report = run_publish(project)
    users = pl.read_parquet(project.knowledge_dir / "user_knowledge.parquet")
    items = pl.read_parquet(project.knowledge_dir / "item_knowledge.parquet")
    assert (report.users, report.items) == (users.height, items.height)

    views = {v["name"]: v for v in list_knowledge_views(project.feature_repo)}
    assert set(views) >= {"user_knowledge", "item_knowledge"}
    assert views["user_knowledge"]["tags"]["kar.llm"] == "smollm2-135m-instruct@bfloat16"

    user_id = users["entity_id"][0]
    item_ids = [items["entity_id"][1], "no-such-item", items["entity_id"][0]]
    batch = OnlineKnowledge(project.feature_repo).get(user_id, item_ids)
    np.testing.assert_allclose(batch.user, np.asarray(users["vector"][0]), rtol=1e-6)
    np.testing.assert_allclose(batch.items[0], np.asarray(items["vector"][1]), rtol=1e-6)
    assert batch.items_missing.tolist() == [False, True, False]
    assert not batch.items[1].any()

    _, split = load_data(project)
    rows = split.test.select("user_id", "item_id", pl.col("timestamp").alias("event_timestamp"))
    frame = training_set(project.feature_repo, rows)
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
    from kar.pipeline import TIMINGS_FILE, run_evaluate

    summary, md, png = run_evaluate(project, progress=False)
    table = md.read_text()
    for name in ("baseline_lr", "deepfm", "din"):
        assert f"| {name} |" in table
    assert png.exists() and png.stat().st_size > 1000
    assert set(summary["backbone"]) == {"baseline_lr", "deepfm", "din"}
    timings = json.loads((project.artifacts / TIMINGS_FILE).read_text())
    assert {"generate", "encode", "train", "evaluate"} <= set(timings)
