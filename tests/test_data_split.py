"""KAR's time split: history < as_of <= CTR rows per user; train/valid/test by global time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from kar.data import Dataset, load_movielens, make_time_split
from kar.data.schema import INTERACTION_SCHEMA

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _ds(rows: list[tuple[str, str, int]]) -> Dataset:
    """rows: (user_id, item_id, seconds after T0)."""
    inter = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [T0 + timedelta(seconds=r[2]) for r in rows],
            "rating": [4.0] * len(rows),
            "label": [1] * len(rows),
        },
        schema=INTERACTION_SCHEMA,
    )
    empty = pl.DataFrame({"item_id": []}, schema={"item_id": pl.Utf8})
    return Dataset("t", inter, empty, inter.select("user_id").unique())


def _check_invariants(ds: Dataset, sp) -> None:
    parts = {"history": sp.history, "train": sp.train, "valid": sp.valid, "test": sp.test}
    keyed = [p.select("user_id", "item_id", "timestamp") for p in parts.values()]
    union = pl.concat(keyed)
    assert union.height == ds.interactions.height  # cover all rows ...
    assert union.unique().height == union.height  # ... each exactly once
    assert union.sort(pl.all()).equals(
        ds.interactions.select("user_id", "item_id", "timestamp").sort(pl.all())
    )
    assert set(sp.as_of["user_id"]) == set(ds.interactions["user_id"])
    hist = sp.history.join(sp.as_of, on="user_id")
    assert (hist["timestamp"] < hist["as_of"]).all()
    ctr = pl.concat([sp.train, sp.valid, sp.test]).join(sp.as_of, on="user_id")
    assert (ctr["timestamp"] >= ctr["as_of"]).all()
    # every interaction strictly before as_of is a history row (the prompt sees all of them)
    before = ds.interactions.join(sp.as_of, on="user_id").filter(
        pl.col("timestamp") < pl.col("as_of")
    )
    assert before.height == sp.history.height
    if sp.train.height and sp.test.height:
        assert sp.test["timestamp"].min() >= sp.train["timestamp"].max()
    if sp.valid.height and sp.test.height:
        assert sp.test["timestamp"].min() >= sp.valid["timestamp"].max()
    if sp.valid.height and sp.train.height:
        assert sp.valid["timestamp"].min() >= sp.train["timestamp"].max()


def test_ml100k_split_invariants(ml100k_dir) -> None:
    ds = load_movielens(ml100k_dir)
    sp = make_time_split(ds)
    _check_invariants(ds, sp)
    assert sp.as_of.height == 943
    assert sp.history.group_by("user_id").len()["len"].max() <= 40  # cap 20 + same-second ties
    n_ctr = sp.train.height + sp.valid.height + sp.test.height
    assert abs(sp.test.height / n_ctr - 0.1) < 0.01
    assert abs(sp.valid.height / n_ctr - 0.1) < 0.01


def test_history_size_rule() -> None:
    rows = [("a", f"i{k:02d}", k * 10) for k in range(60)] + [
        ("b", f"i{k}", 5 + k) for k in range(7)
    ]
    sp = make_time_split(_ds(rows), history_cap=20, history_fraction=0.5)
    counts = dict(sp.history.group_by("user_id").len().iter_rows())
    assert counts == {"a": 20, "b": 3}  # min(20, 30) and floor(7 * 0.5)
    first_ctr_a = T0 + timedelta(seconds=200)
    as_of = dict(sp.as_of.select("user_id", "as_of").iter_rows())
    assert as_of["a"] == T0 + timedelta(seconds=190, microseconds=1)
    assert as_of["a"] <= first_ctr_a


def test_ties_at_boundary_move_into_history() -> None:
    # user u: 4 rows, h = 2, but rows 2 and 3 share a second -> both history; tie-break by item
    rows = [("u", "z", 0), ("u", "b", 10), ("u", "a", 10), ("u", "c", 20)]
    ds = _ds(rows)
    sp = make_time_split(ds, history_fraction=0.5)
    assert sorted(sp.history["item_id"]) == ["a", "b", "z"]
    ctr = pl.concat([sp.train, sp.valid, sp.test])
    assert ctr["item_id"].to_list() == ["c"]
    assert sp.as_of["as_of"][0] == T0 + timedelta(seconds=10, microseconds=1)
    _check_invariants(ds, sp)


def test_single_interaction_and_min_history() -> None:
    rows = [("solo", "x", 5), ("pair", "x", 1), ("pair", "y", 2), ("w", "x", 3), ("w", "y", 4)]
    ds = _ds(rows)
    sp = make_time_split(ds, history_fraction=0.0, min_history=1)
    _check_invariants(ds, sp)
    as_of = {r["user_id"]: r for r in sp.as_of.iter_rows(named=True)}
    # one interaction: empty history, as_of = its own timestamp, the row is a CTR sample
    assert as_of["solo"]["n_history"] == 0
    assert as_of["solo"]["as_of"] == T0 + timedelta(seconds=5)
    assert "solo" not in set(sp.history["user_id"])
    # n >= 2 gets min_history rows even when the fraction gives 0
    assert as_of["pair"]["n_history"] == 1


def test_all_same_timestamp_user_has_no_ctr_rows() -> None:
    ds = _ds([("u", "a", 7), ("u", "b", 7), ("u", "c", 7), ("v", "a", 1), ("v", "b", 9)])
    sp = make_time_split(ds)
    _check_invariants(ds, sp)
    assert sp.history.filter(pl.col("user_id") == "u").height == 3


def test_fractions_and_validation() -> None:
    rows = [(f"u{k % 5}", f"i{k}", k) for k in range(200)]
    ds = _ds(rows)
    sp = make_time_split(ds, history_cap=0, valid_fraction=0.0, test_fraction=0.25, min_history=0)
    assert sp.history.height == 0 and sp.valid.height == 0
    assert sp.test.height == 50 and sp.train.height == 150
    _check_invariants(ds, sp)
    with pytest.raises(ValueError):
        make_time_split(ds, valid_fraction=0.7, test_fraction=0.5)
