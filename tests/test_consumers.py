"""benchmarks/consumers.py's data side against a real Feast repository (DuckDB offline store):
its training sets are point in time, the raw encodings it publishes are valid from each user's
as-of instant, and its shuffled control keeps the vectors while breaking their pairing.
(The benchmark itself trains for minutes to hours; the lead runs it by hand.)"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.features import init_feature_repo, publish

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "consumers.py"
REFS = {
    "user": "user_knowledge:user_knowledge_vector",
    "item": "item_knowledge:item_knowledge_vector",
}
T0, T1, T2, T3, T4 = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4, 5))
DIM = 4


@pytest.fixture(scope="module")
def consumers():
    spec = importlib.util.spec_from_file_location("consumers_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["consumers_benchmark"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _vectors(key: str, ids: list[str], values: list[float], ts: datetime) -> pl.DataFrame:
    return pl.DataFrame(
        {
            key: ids,
            "vector": [[v] * DIM for v in values],
            "event_timestamp": [ts] * len(ids),
        },
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """u0-u2 and i0-i1 published at T1; u0 again at T3 (a refresh); i2 first at T3."""
    repo = init_feature_repo(
        tmp_path_factory.mktemp("consumers") / "fr", project="kar_test", vector_dim=DIM
    )
    users = _vectors("user_id", ["u0", "u1", "u2"], [1.0, 2.0, 3.0], T1)
    items = _vectors("item_id", ["i0", "i1"], [10.0, 11.0], T1)
    publish(repo, users, items, materialize=False)
    later_users = _vectors("user_id", ["u0"], [100.0], T3)
    publish(repo, later_users, _vectors("item_id", ["i2"], [12.0], T3), materialize=False)
    return repo


def _rows(samples: list[tuple[str, str, datetime, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        samples, schema=["user_id", "item_id", "event_timestamp", "split"], orient="row"
    ).with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))


def test_training_sets_are_point_in_time(consumers, repo: Path) -> None:
    rows = _rows(
        [
            ("u0", "i0", T0, "train"),  # before anything was published
            ("u0", "i2", T2, "train"),  # i2 is published only at T3
            ("u0", "i2", T4, "valid"),  # after u0's refresh and i2's publish
            ("u1", "i1", T2, "valid"),
            ("u9", "i0", T4, "test"),  # a user never published
        ]
    )
    knowledge = consumers.read_knowledge(repo, rows, REFS)
    user, item = knowledge["user"], knowledge["item"]
    assert user.rows["train"][0] == -1 and item.rows["train"][0] == -1
    train_users, train_items = user.dense("train"), item.dense("train")
    assert np.isnan(train_users[0]).all() and np.isnan(train_items[0]).all()
    np.testing.assert_array_equal(train_users[1], [1.0] * DIM)  # u0's T1 vector at T2
    assert np.isnan(train_items[1]).all()  # i2 published after the sample: not seen
    valid_users, valid_items = user.dense("valid"), item.dense("valid")
    np.testing.assert_array_equal(valid_users[0], [100.0] * DIM)  # the refresh, seen at T4
    np.testing.assert_array_equal(valid_items[0], [12.0] * DIM)
    np.testing.assert_array_equal(valid_users[1], [2.0] * DIM)
    assert user.rows["test"][0] == -1 and item.rows["test"][0] >= 0


def test_kar_backbones_read_the_vectors_feast_returned(
    consumers, repo: Path, synthetic_features
) -> None:
    """kar's backbones as consumers see, per sample, exactly the Feast row (none: missing)."""
    f = synthetic_features
    samples = {s: f.samples[s].select("user_id", "item_id") for s in ("train", "valid", "test")}
    rng = np.random.default_rng(0)
    columns = []
    for _kind in ("user", "item"):
        rows = {s: rng.integers(-1, 3, frame.height) for s, frame in samples.items()}
        columns.append(consumers.KnowledgeColumn(rows, rng.standard_normal((3, 5)).astype("f4")))
    features = consumers.with_rows(f, *columns)
    tensors = features.tensors("valid")
    user_vectors = features.user_knowledge[tensors["user_k"].numpy()]
    expected = np.nan_to_num(columns[0].dense("valid"), nan=0.0)
    np.testing.assert_array_equal(user_vectors, expected)
    missing = features.user_missing[tensors["user_k"].numpy()]
    np.testing.assert_array_equal(missing == 1, columns[0].rows["valid"] < 0)
    assert features.item_missing[tensors["history_k"].numpy()].min() == 1.0  # ids only


def test_shuffled_arm_keeps_the_vectors_and_changes_the_pairing(consumers) -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    rows = {"train": np.array([0, 1, -1, 2, 49]), "valid": np.array([3, -1]), "test": np.array([7])}
    column = consumers.KnowledgeColumn(rows, table)
    shuffled = column.shuffled(seed=0)
    assert {tuple(r) for r in shuffled.table} == {tuple(r) for r in table}  # same vectors
    moved = (shuffled.table != table).any(axis=1)
    assert moved.mean() > 0.8  # most entities now read another entity's vector
    for split in rows:
        np.testing.assert_array_equal(shuffled.rows[split], rows[split])  # same samples
        assert (np.isnan(shuffled.dense(split)).all(1) == (rows[split] < 0)).all()
    assert not np.array_equal(shuffled.table, column.shuffled(seed=1).table)  # per seed


def test_raw_encodings_are_valid_from_each_users_as_of(consumers, tmp_path: Path) -> None:
    """The joint arm's raw encodings, published by the example to declared Feast views: a
    sample sees its user's encoding from the user's as-of instant on, never before."""
    from joint_deepctr import RAW_FEATURES, entity_rows, publish_raw_encodings

    import kar
    from kar.encoding import EntityVectors
    from kar.encoding.vectors import vectors_frame

    project = kar.Project.init(tmp_path / "demo", n_users=12)
    users = project.dataset.users["user_id"].to_list()
    items = project.dataset.items["item_id"].to_list()
    rng = np.random.default_rng(0)
    EntityVectors(
        vectors_frame(users, rng.standard_normal((len(users), 6))),
        vectors_frame(items, rng.standard_normal((len(items), 6))),
        dim=6,
        encoder_id="test",
    ).save(project.folder.encoded_dir)
    refs = publish_raw_encodings(project)
    assert publish_raw_encodings(project) == refs  # the same encodings: nothing new
    user, as_of = project.split.as_of.select("user_id", "as_of").row(0)
    before = _rows([(user, items[0], as_of - timedelta(days=1), "test")])
    rows = pl.concat([entity_rows(project.split).drop("label"), before])
    knowledge = consumers.read_knowledge(
        project.folder.feature_repo, rows, dict(zip(("user_raw", "item_raw"), refs, strict=True))
    )
    assert (knowledge["user_raw"].rows["train"] >= 0).all()  # every CTR row is after as_of
    assert (knowledge["item_raw"].rows["valid"] >= 0).all()
    assert knowledge["user_raw"].rows["test"][-1] == -1  # before the user's as-of: none
    assert knowledge["user_raw"].table.shape[1] == 6
    assert set(RAW_FEATURES.values()) == {r.split(":")[1] for r in refs}


def _runs(arms: dict[str, list[float]]) -> pl.DataFrame:
    rows = [
        {"dataset": "d", "consumer": "deepctr_deepfm", "arm": arm, "seed": seed,
         "valid_auc": auc, "test_auc": auc, "best_epoch": 1, "config": "{}"}
        for arm, aucs in arms.items() for seed, auc in enumerate(aucs)
    ]  # fmt: skip
    return pl.DataFrame(rows)


def test_an_arm_without_its_control_gets_no_mark_and_the_headline_says_n_a(consumers) -> None:
    summary = consumers.summarize(_runs({"none": [0.70, 0.70], "joint": [0.80, 0.80]}))
    joint = summary.filter(pl.col("arm") == "joint").row(0, named=True)
    assert joint["counts"] is None and joint["vs_shuffled"] is None
    assert "✓" not in consumers.markdown_table(summary)
    assert consumers.headline(summary) == (
        "consumers_above_shuffled: 0/0 consumer_gain_mean: n/a adaptor_vs_pca: n/a"
    )
    with_control = _runs(
        {"none": [0.70, 0.70], "published": [0.80, 0.80], "shuffled": [0.69, 0.69]}
    )
    summary = consumers.summarize(with_control)
    assert "+14.29% | +15.94% ✓" in consumers.markdown_table(summary)
    assert consumers.headline(summary).startswith(
        "consumers_above_shuffled: 1/1 consumer_gain_mean: 14.29% adaptor_vs_pca: n/a"
    )


def test_deepctr_chooses_how_vectors_enter_only_where_an_arm_reads_vectors(consumers) -> None:
    joint = consumers.grid("deepctr_deepfm", "joint", quick=False)
    assert {p["knowledge_as"] for p in joint} == {"dense", "fields"}
    assert {(p["adaptor"], p.get("standardize", False)) for p in joint} == {
        ("fresh", False),
        ("fresh", True),
        ("trained", False),
    }
    for arm in consumers.VECTORLESS_ARMS:
        assert all("knowledge_as" not in p for p in consumers.grid("deepctr_deepfm", arm, False))
    assert all("knowledge_as" not in p for p in consumers.grid("rechub_widedeep", "joint", False))
