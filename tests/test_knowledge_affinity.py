"""The ``knowledge_affinity`` on-demand feature view (kar.features.affinity) in a real Feast
repository: registered at publish, in the ``kar_ctr_knowledge`` service and the listing; its
offline (point-in-time) and online values are the dot product of the user and item vectors
Feast serves for the pair, 0 when either is missing; benchmarks/consumers.py reads it."""

from __future__ import annotations

import importlib.util
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.features import (
    OnlineKnowledge,
    feature_store,
    init_feature_repo,
    list_knowledge_views,
    publish,
    training_set,
)
from kar.features.affinity import (
    AFFINITY_VIEW,
    COSINE_FEATURE,
    DOT_FEATURE,
    DOT_REF,
    affinity_of_rows,
)
from kar.features.repo import FEATURE_SERVICE

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "consumers.py"
T0, T1, T2, T3, T4 = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4, 5))
DIM = 4
RNG = np.random.default_rng(7)
USERS = {u: RNG.normal(size=DIM).astype(np.float32) for u in ("u0", "u1", "u2")}
ITEMS = {i: RNG.normal(size=DIM).astype(np.float32) for i in ("i0", "i1", "i2")}
U0_LATER = RNG.normal(size=DIM).astype(np.float32)


def _frame(key: str, vectors: dict[str, np.ndarray], ts: datetime) -> pl.DataFrame:
    return pl.DataFrame(
        {
            key: list(vectors),
            "vector": [v.tolist() for v in vectors.values()],
            "event_timestamp": [ts] * len(vectors),
        },
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every user and item at T1; u0 refreshed at T3 (materialised online: u0's newest)."""
    repo = init_feature_repo(
        tmp_path_factory.mktemp("affinity") / "fr", project="kar_affinity", vector_dim=DIM
    )
    publish(repo, _frame("user_id", USERS, T1), _frame("item_id", ITEMS, T1))
    publish(repo, _frame("user_id", {"u0": U0_LATER}, T3), None)
    return repo


def _dot(u: np.ndarray, i: np.ndarray) -> float:
    return float(np.dot(np.asarray(u, np.float64), np.asarray(i, np.float64)))


def test_registered_in_the_service_and_listed(repo: Path) -> None:
    store = feature_store(repo)
    odfv = store.get_on_demand_feature_view(AFFINITY_VIEW)
    assert [f.name for f in odfv.features] == [DOT_FEATURE, COSINE_FEATURE]
    service = store.get_feature_service(FEATURE_SERVICE)
    names = [p.name for p in service.feature_view_projections]
    assert names == ["user_knowledge", "item_knowledge", AFFINITY_VIEW]
    views = {v["name"]: v for v in list_knowledge_views(repo)}
    assert views[AFFINITY_VIEW]["on_demand"] and views[AFFINITY_VIEW]["entities"] == [
        "user",
        "item",
    ]
    assert views[AFFINITY_VIEW]["sources"] == ["user_knowledge", "item_knowledge"]


def test_offline_values_are_the_point_in_time_dot_product(repo: Path) -> None:
    rows = pl.DataFrame(
        [
            ("u0", "i0", T2),  # u0's T1 vector
            ("u0", "i1", T4),  # u0's T3 refresh
            ("u1", "i2", T2),
            ("u9", "i0", T4),  # a user never published: 0
            ("u1", "i9", T4),  # an item never published: 0
            ("u2", "i1", T0),  # before anything was published: 0
        ],
        schema=["user_id", "item_id", "event_timestamp"],
        orient="row",
    ).with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))
    frame = training_set(repo, rows)  # the default feature service carries the score
    served = [
        _dot(u, i) if u is not None and i is not None else 0.0
        for u, i in zip(
            frame["user_knowledge_vector"].to_list(),
            frame["item_knowledge_vector"].to_list(),
            strict=True,
        )
    ]
    expected = [
        _dot(USERS["u0"], ITEMS["i0"]),
        _dot(U0_LATER, ITEMS["i1"]),
        _dot(USERS["u1"], ITEMS["i2"]),
        0.0,
        0.0,
        0.0,
    ]
    got = frame[DOT_FEATURE].to_numpy()
    np.testing.assert_allclose(got, served, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    cosine = frame[COSINE_FEATURE].to_numpy()
    norm = np.linalg.norm(U0_LATER.astype(np.float64)) * np.linalg.norm(ITEMS["i1"])
    assert cosine[1] == pytest.approx(expected[1] / norm, rel=1e-6)
    assert (cosine[3:] == 0).all() and np.isfinite(cosine).all()

    refs = training_set(repo, rows, [DOT_REF])  # the score alone, by its ref
    np.testing.assert_allclose(refs[DOT_FEATURE].to_numpy(), got, rtol=1e-9)


def test_online_values_are_the_dot_product_of_the_served_vectors(repo: Path) -> None:
    store = feature_store(repo)
    pairs = [("u0", "i1"), ("u1", "i0"), ("u9", "i0"), ("u2", "i9")]
    reply = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE),
        entity_rows=[{"user_id": u, "item_id": i} for u, i in pairs],
    ).to_dict()
    served = [
        _dot(u, i) if u is not None and i is not None else 0.0
        for u, i in zip(reply["user_knowledge_vector"], reply["item_knowledge_vector"], strict=True)
    ]
    expected = [_dot(U0_LATER, ITEMS["i1"]), _dot(USERS["u1"], ITEMS["i0"]), 0.0, 0.0]
    np.testing.assert_allclose(reply[DOT_FEATURE], served, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(reply[DOT_FEATURE], expected, rtol=1e-6, atol=1e-9)
    # the serving path's batch gives the same score from the vectors it just read
    batch = OnlineKnowledge(repo).get("u0", ["i1", "i9", "i2"])
    np.testing.assert_allclose(
        batch.affinity, [expected[0], 0.0, _dot(U0_LATER, ITEMS["i2"])], rtol=1e-6
    )
    assert (OnlineKnowledge(repo).get("u9", ["i0"]).affinity == 0).all()


def test_skipped_with_a_warning_until_both_kinds_are_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = init_feature_repo(tmp_path / "fr", project="kar_affinity_half", vector_dim=DIM)
    with caplog.at_level(logging.WARNING, logger="kar.features.affinity"):
        publish(repo, _frame("user_id", USERS, T1), None, materialize=False)
    assert f"{AFFINITY_VIEW} not registered: item_knowledge has no published" in caplog.text
    store = feature_store(repo)
    assert [v.name for v in store.list_on_demand_feature_views()] == []
    service = store.get_feature_service(FEATURE_SERVICE)  # the plain one
    assert [p.name for p in service.feature_view_projections] == [
        "user_knowledge",
        "item_knowledge",
    ]


def test_consumer_benchmark_reads_the_score_and_recomputes_its_control(repo: Path) -> None:
    spec = importlib.util.spec_from_file_location("consumers_affinity", SCRIPT)
    assert spec is not None and spec.loader is not None
    consumers = importlib.util.module_from_spec(spec)
    sys.modules["consumers_affinity"] = consumers  # its dataclasses look their module up
    spec.loader.exec_module(consumers)
    rows = pl.DataFrame(
        [
            ("u0", "i0", T2, "train"),
            ("u1", "i1", T4, "train"),
            ("u0", "i2", T4, "valid"),
            ("u9", "i0", T4, "test"),
            ("u2", "i1", T4, "test"),
        ],
        schema=["user_id", "item_id", "event_timestamp", "split"],
        orient="row",
    ).with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))
    refs = {
        "user": "user_knowledge:user_knowledge_vector",
        "item": "item_knowledge:item_knowledge_vector",
    }
    knowledge, scalars = consumers.read_features(repo, rows, refs, [DOT_REF])
    user, item = knowledge["user"], knowledge["item"]
    recomputed = consumers.affinity_column(user, item)
    for split in ("train", "valid", "test"):
        np.testing.assert_allclose(scalars[DOT_REF][split], recomputed[split], rtol=1e-6)
    assert scalars[DOT_REF]["test"][0] == 0.0  # u9: no vector
    # the control: the score of the shuffled vectors, not Feast's
    su, si = user.shuffled(0), item.shuffled(1)
    control = consumers.affinity_column(su, si)
    np.testing.assert_allclose(
        control["train"],
        affinity_of_rows(su.table, si.table, user.rows["train"], item.rows["train"]),
    )
    assert set(consumers.AFFINITY_ARMS) <= set(consumers.ARMS)
    assert consumers.CONTROLS["published+affinity"] == "shuffled+affinity"
    # summarize compares each affinity arm with its own shuffled counterpart
    runs = pl.DataFrame(
        [
            ("d", "gbdt", arm, seed, auc + 0.001 * seed, "{}")
            for arm, auc in (
                ("none", 0.70),
                ("shuffled", 0.71),
                ("published+affinity", 0.80),
                ("shuffled+affinity", 0.75),
            )
            for seed in range(2)
        ],
        schema=["dataset", "consumer", "arm", "seed", "test_auc", "config"],
        orient="row",
    )
    summary = {r["arm"]: r for r in consumers.summarize(runs).iter_rows(named=True)}
    assert summary["published+affinity"]["vs_shuffled"] == pytest.approx(0.8005 / 0.7505 - 1)
    assert summary["shuffled+affinity"]["vs_shuffled"] is None


def test_affinity_arms_train_every_kind_of_consumer(synthetic_features) -> None:
    """The affinity arms' score is one more dense column, and each consumer kind trains on
    it (a smoke run: 1 epoch, random vectors)."""
    spec = importlib.util.spec_from_file_location("consumers_affinity_smoke", SCRIPT)
    assert spec is not None and spec.loader is not None
    consumers = importlib.util.module_from_spec(spec)
    sys.modules["consumers_affinity_smoke"] = consumers
    spec.loader.exec_module(consumers)
    from kar.adaptor import AdaptorConfig
    from kar.project import TrainingSettings

    f = synthetic_features
    rng = np.random.default_rng(0)
    n = {s: len(f.arrays[s]["label"]) for s in consumers.SPLITS}
    user, item = (
        consumers.KnowledgeColumn(
            {s: rng.integers(-1, size, n[s]) for s in consumers.SPLITS},
            rng.standard_normal((size, 8)).astype("f4"),
        )
        for size in (30, 50)
    )
    tr = TrainingSettings()
    data = consumers.ConsumerData(
        name="smoke", features=f, knowledge={"user": user, "item": item},
        affinity=consumers.affinity_column(user, item), adaptor_config=AdaptorConfig(),
        adaptor_dir=Path("/nonexistent"), model_configs={"din": tr.backbone_config("din")},
        batch_size=256, max_epochs=1, rows=n, feast_seconds=0.0,
    )  # fmt: skip
    width = f.arrays["train"]["counters"].shape[1]
    widened = data.ctr_features("affinity", 0).arrays["valid"]["counters"]
    assert widened.shape[1] == width + 1
    np.testing.assert_array_equal(widened[:, :width], f.arrays["valid"]["counters"])
    assert data.ctr_features("published", 0) is f
    runs = []
    for consumer in ("gbdt", "deepctr_deepfm", "kar_din"):
        for arm in ("published+affinity", "shuffled_affinity"):
            runs += consumers.run_cell(data, consumer, arm, [0], quick=True)
    assert all(0.0 < r["test_auc"] < 1.0 for r in runs) and len(runs) == 6
