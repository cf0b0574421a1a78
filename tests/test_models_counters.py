"""Point-in-time counters and the shuffled-knowledge control."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

from kar.data.schema import INTERACTION_SCHEMA, Dataset, Split
from kar.models.counters import COUNTER_NAMES, counts_before
from kar.models.inputs import CTRFeatures
from kar.models.toydata import random_knowledge


def rows(data: list[tuple[str, str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in data],
            "item_id": [r[1] for r in data],
            "timestamp": [datetime.fromtimestamp(r[2], UTC) for r in data],
            "rating": [float(4 * r[3] + 1) for r in data],
            "label": [r[3] for r in data],
        },
        schema=INTERACTION_SCHEMA,
    )


def dataset(train_labels: tuple[int, int, int]) -> tuple[Dataset, Split]:
    history = rows([("a", "x", 1, 1), ("b", "x", 2, 0)])
    train = rows([("c", "x", 5, train_labels[0]), ("a", "y", 6, train_labels[1]),
                  ("d", "x", 6, train_labels[2])])  # fmt: skip
    valid = rows([("b", "y", 8, 1)])
    test = rows([("e", "x", 9, 0)])
    items = pl.DataFrame(
        {"item_id": ["x", "y"], "title": ["X", "Y"], "year": [1990, 2000],
         "genres": [["Drama"], ["Comedy"]], "creator": ["p", "q"]},
        schema_overrides={"year": pl.Int32},
    )  # fmt: skip
    users = pl.DataFrame({"user_id": list("abcde")})
    ds = Dataset("tiny", pl.concat([history, train, valid, test]), items, users)
    as_of = pl.DataFrame({"user_id": ["a", "b"], "as_of": [None, None]})
    return ds, Split(history, train, valid, test, as_of)


def test_counters_see_only_strictly_earlier_labels():
    f = CTRFeatures.build(*dataset((1, 1, 1)))
    assert f.arrays["train"]["counters"].shape == (3, len(COUNTER_NAMES))
    item_pos, item_n = counts_before(f.events, f.samples["train"], "item_id")
    # c@5 on x: history rows at t=1, 2 -> 1 positive of 2; d@6 on x: + c@5 -> 2 of 3;
    # a@6 on y: nothing before
    assert item_n.tolist() == [2, 0, 3] and item_pos.tolist() == [1, 0, 2]
    # e@9 on x (test): every earlier interaction counts, train included
    assert counts_before(f.events, f.samples["test"], "item_id")[1].tolist() == [4]


def test_a_counter_never_sees_its_own_or_a_later_label():
    def counts(f: CTRFeatures, split: str) -> list[list[float]]:
        out = [counts_before(f.events, f.samples[split], k) for k in ("user_id", "item_id")]
        return [v.tolist() for pair in out for v in pair]

    base = CTRFeatures.build(*dataset((1, 1, 1)))
    # flip a@6's and d@6's labels: each sample's own label and one of the same instant
    flipped = CTRFeatures.build(*dataset((1, 0, 0)))
    assert counts(flipped, "train") == counts(base, "train")
    # the later rows (valid b@8, test e@9) do see them
    assert counts(flipped, "test") != counts(base, "test")
    # an earlier label (c@5) moves the later train row d@6 only
    earlier = CTRFeatures.build(*dataset((0, 1, 1)))
    assert counts_before(earlier.events, earlier.samples["train"], "item_id")[0].tolist() == [
        1, 0, 1,
    ]  # fmt: skip
    # the model's counter input is computed from exactly these counts
    assert np.isfinite(base.arrays["train"]["counters"]).all()


def test_shuffled_control_keeps_the_distribution_and_drops_the_pairing():
    ds, split = dataset((1, 1, 1))
    ids = [f"u{k}" for k in range(40)]
    users = pl.concat([random_knowledge(list("abcd"), dim=6), random_knowledge(ids, dim=6, seed=3)])
    ds = Dataset(ds.name, ds.interactions, ds.items,
                 pl.concat([ds.users, pl.DataFrame({"user_id": ids})]))  # fmt: skip
    items = random_knowledge(["x", "y"], dim=6, seed=1)
    f = CTRFeatures.build(ds, split, knowledge_users=users, knowledge_items=items)
    s = f.with_shuffled_knowledge(seed=0)
    # the same vectors, the same missing flags, the same samples
    assert np.array_equal(s.user_missing, f.user_missing)
    present = f.user_missing == 0
    assert sorted(map(tuple, s.user_knowledge[present])) == sorted(
        map(tuple, f.user_knowledge[present])
    )
    assert not s.user_knowledge[~present].any()  # rows without knowledge stay empty
    # ... but paired with other entities
    moved = (s.user_knowledge[present] != f.user_knowledge[present]).any(1).mean()
    assert moved > 0.8
    assert s.arrays is f.arrays and s.samples is f.samples
    again = f.with_shuffled_knowledge(seed=0)
    assert np.array_equal(again.user_knowledge, s.user_knowledge)  # reproducible
