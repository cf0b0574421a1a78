"""CTRFeatures: vocabularies, attributes, behaviour sequences, knowledge matrices."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.data.schema import INTERACTION_SCHEMA, TIMESTAMP, Dataset, Split
from kar.errors import DataValidationError
from kar.models.inputs import CTRFeatures
from kar.models.toydata import random_knowledge, simple_time_split

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def read_ml100k(path: Path, n_rows: int = 5000) -> Dataset:
    """A small real Dataset from the first ``n_rows`` ratings of MovieLens 100K."""
    ratings = pl.read_csv(
        path / "u.data", separator="\t", has_header=False, n_rows=n_rows,
        new_columns=["user_id", "item_id", "rating", "ts"],
        schema_overrides={"user_id": pl.Utf8, "item_id": pl.Utf8},
    )  # fmt: skip
    interactions = ratings.select(
        "user_id",
        "item_id",
        (pl.col("ts") * 1_000_000).cast(TIMESTAMP).alias("timestamp"),
        pl.col("rating").cast(pl.Float64),
        (pl.col("rating") >= 4).cast(pl.Int8).alias("label"),
    )
    text = (path / "u.item").read_bytes().decode("latin-1")
    raw = pl.read_csv(io.StringIO(text), separator="|", has_header=False, infer_schema=False)
    flags = raw.select(raw.columns[5:]).to_numpy() == "1"
    items = pl.DataFrame(
        {
            "item_id": raw[:, 0],
            "title": raw[:, 1],
            "year": raw[:, 2].str.slice(-4).cast(pl.Int32, strict=False),
            "genres": [[g for g, f in zip(GENRES, row, strict=True) if f] for row in flags],
            "creator": pl.Series([None] * raw.height, dtype=pl.Utf8),
        }
    )
    users = pl.read_csv(
        path / "u.user", separator="|", has_header=False, infer_schema=False,
        new_columns=["user_id", "age", "gender", "occupation", "zip"],
    ).drop("zip")  # fmt: skip
    return Dataset("ml-100k-sample", interactions, items, users)


def frame(rows: list[tuple[str, str, int, int]]) -> pl.DataFrame:
    """Interactions from (user, item, epoch seconds, label)."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [datetime.fromtimestamp(r[2], UTC) for r in rows],
            "rating": [float(4 * r[3] + 1) for r in rows],
            "label": [r[3] for r in rows],
        },
        schema=INTERACTION_SCHEMA,
    )


@pytest.fixture
def tiny() -> tuple[Dataset, Split]:
    history = frame([("a", "i1", 10, 1), ("b", "i2", 10, 1), ("a", "i4", 15, 0)])
    train = frame([("a", "i2", 20, 1), ("b", "i1", 20, 0)])
    valid = frame([("a", "i3", 20, 1), ("a", "i9", 30, 1)])  # i3: same second as i2; i9 unseen
    test = frame([("z", "i1", 40, 1), ("a", "i1", 40, 0)])  # z: unseen user
    items = pl.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4", "i9"],
            "title": ["A", "B", "C", "D", "E"],
            "year": [1995, 1987, None, 2001, 1999],
            "genres": [["Drama"], ["Comedy", "Drama"], [], ["Horror"], ["Comedy"]],
            "creator": ["x", "y", None, "x", "q"],
        },
        schema_overrides={"year": pl.Int32},
    )
    users = pl.DataFrame({"user_id": ["a", "b", "z"], "gender": ["F", "M", "F"]})
    ds = Dataset("tiny", pl.concat([history, train, valid, test]), items, users)
    as_of = pl.DataFrame({"user_id": ["a", "b"], "as_of": [None, None]})
    return ds, Split(history, train, valid, test, as_of)


def idx(f: CTRFeatures, kind: str, entity: str) -> int:
    vocab = f.users if kind == "user" else f.items
    return int(vocab.filter(pl.col(f"{kind}_id") == entity)[f"{kind}_id_idx"][0])


def kidx(f: CTRFeatures, kind: str, entity: str) -> int:
    """Row of ``entity`` in the knowledge matrices (over every user / item)."""
    vocab = f.knowledge_users if kind == "user" else f.knowledge_items
    return int(vocab.filter(pl.col(f"{kind}_id") == entity)[f"{kind}_id_idx"][0])


def test_behaviour_sequence_is_strictly_before_and_carries_labels(tiny):
    ds, split = tiny
    f = CTRFeatures.build(ds, split, history_len=3)
    valid = f.arrays["valid"]
    i1, i2, i4 = (idx(f, "item", i) for i in ("i1", "i2", "i4"))
    k = {i: kidx(f, "item", i) for i in ("i1", "i2", "i3", "i4", "i9")}
    # sample at t=20: the positive i2 of the same second is excluded; the negative i4 is in,
    # labelled "not clicked" (1), the positive i1 "clicked" (2), padding 0
    assert valid["history"][0].tolist() == [0, i1, i4]
    assert valid["history_label"][0].tolist() == [0, 2, 1]
    assert valid["history_k"][0].tolist() == [0, k["i1"], k["i4"]]
    # sample at t=30: i2 and i3 (t=20) are now in the past; i3 is unseen in history + train,
    # so its id maps to 0, but its knowledge index and label are kept
    assert valid["history"][1].tolist()[0] == i4
    assert sorted(valid["history_k"][1].tolist()[1:]) == sorted([k["i2"], k["i3"]])
    assert valid["history_label"][1].tolist() == [1, 2, 2]
    # test at t=40 for user a: the latest 3 are i2, i3 (t=20) and i9 (t=30)
    test = f.arrays["test"]
    assert sorted(test["history"][1].tolist()) == [0, 0, i2]
    assert test["history_k"][1].tolist()[-1] == k["i9"] and test["history_label"][1].min() == 2
    # the unseen user z has no history at all
    assert test["history_label"][0].tolist() == [0, 0, 0]


def test_unseen_ids_map_to_unknown_and_attributes_survive(tiny):
    ds, split = tiny
    f = CTRFeatures.build(ds, split)
    assert f.n_users == 2 and f.n_items == 3  # i1, i2, i4 from history + train
    valid, test = f.arrays["valid"], f.arrays["test"]
    assert valid["item"].tolist() == [0, 0]  # i3, i9 never seen in history + train
    assert test["user"][0] == 0 and test["user"][1] == idx(f, "user", "a")
    # the unseen item i9 still has its genre, decade and creator indices
    assert valid["genres"][1, 0] > 0 and valid["item_attrs"][1].min() > 0
    # i3 has no year, no creator, no genres -> all unknown
    assert valid["item_attrs"][0].tolist() == [0, 0] and valid["genres"][0].sum() == 0
    # user z is not in the vocabulary but its gender attribute is known
    assert test["user_attrs"][0, 0] > 0
    tensors = f.tensors("train")
    assert tensors["label"].dtype.is_floating_point and tensors["history"].shape == (2, 20)


def test_knowledge_matrix_and_missing_flags(tiny):
    ds, split = tiny
    users = random_knowledge(["a"], dim=4)
    items = random_knowledge(["i1", "i2", "i9"], dim=4)
    f = CTRFeatures.build(ds, split, knowledge_users=users, knowledge_items=items)
    assert f.user_knowledge.shape == (f.knowledge_users.height + 1, 4)
    assert f.item_knowledge.shape == (f.knowledge_items.height + 1, 4)
    a, b = kidx(f, "user", "a"), kidx(f, "user", "b")
    np.testing.assert_array_equal(f.user_knowledge[a], users["vector"][0].to_numpy())
    assert f.user_missing[a] == 0 and f.user_missing[b] == 1 and f.user_missing[0] == 1
    assert not f.user_knowledge[b].any()
    assert f.item_missing[kidx(f, "item", "i4")] == 1
    assert not f.without_knowledge().has_knowledge and f.has_knowledge


def test_cold_start_item_keeps_its_knowledge(tiny):
    """i9 is first seen in valid: no id embedding (index 0), but its LLM knowledge is used."""
    ds, split = tiny
    items = random_knowledge(["i1", "i2", "i9"], dim=4)
    f = CTRFeatures.build(
        ds, split, knowledge_users=random_knowledge(["a"], dim=4), knowledge_items=items
    )
    valid = f.arrays["valid"]
    row = split.valid["item_id"].to_list().index("i9")
    assert valid["item"][row] == 0
    k = valid["item_k"][row]
    assert k == kidx(f, "item", "i9") and f.item_missing[k] == 0
    np.testing.assert_array_equal(f.item_knowledge[k], items["vector"][2].to_numpy())


def test_bad_knowledge_vectors_are_rejected(tiny):
    ds, split = tiny
    bad = pl.DataFrame(
        {"entity_id": ["i1", "i2"], "vector": [[0.1, 0.2], [0.3]]},
        schema={"entity_id": pl.Utf8, "vector": pl.List(pl.Float32)},
    )
    with pytest.raises(DataValidationError, match="row 2.*'vector'"):
        CTRFeatures.build(
            ds, split, knowledge_users=random_knowledge(["a"], 2), knowledge_items=bad
        )
    dup = random_knowledge(["a", "a"], 2)
    with pytest.raises(DataValidationError, match="duplicate"):
        CTRFeatures.build(
            ds, split, knowledge_users=dup, knowledge_items=random_knowledge(["i1"], 2)
        )


def test_missing_column_is_named(tiny):
    ds, split = tiny
    split.train = split.train.drop("label")
    with pytest.raises(DataValidationError, match="'label'"):
        CTRFeatures.build(ds, split)


def test_real_movielens_sample(ml100k_dir):
    ds = read_ml100k(ml100k_dir)
    split = simple_time_split(ds.interactions)
    f = CTRFeatures.build(ds, split, history_len=10)
    for s in ("train", "valid", "test"):
        a = f.arrays[s]
        n = getattr(split, s).height
        assert a["history"].shape == (n, 10) and a["label"].shape == (n,)
        assert a["item"].max() <= f.n_items and a["user_attrs"].shape == (n, 3)
    assert f.n_genres == len(GENRES) + 1
    # a brute-force check of the behaviour sequence of a few samples
    events = pl.concat([split.history, split.train, split.valid, split.test])
    item_of = dict(zip(f.items["item_id"], f.items["item_id_idx"], strict=True))
    for j, row in enumerate(split.test.head(30).iter_rows(named=True)):
        prior = events.filter(
            (pl.col("user_id") == row["user_id"]) & (pl.col("timestamp") < row["timestamp"])
        ).sort("timestamp", maintain_order=True)
        expected = [item_of.get(t, 0) for t in prior["item_id"].tail(10)]
        expected = [0] * (10 - len(expected)) + expected
        assert sorted(f.arrays["test"]["history"][j].tolist()) == sorted(expected)
        labels = [int(v) + 1 for v in prior["label"].tail(10)]
        labels = [0] * (10 - len(labels)) + labels
        assert sorted(f.arrays["test"]["history_label"][j].tolist()) == sorted(labels)
