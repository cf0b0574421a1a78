"""Discrete knowledge codes published to a real Feast repo (DuckDB offline, SQLite online),
read back offline and online, and assigned by refresh with the saved codebook."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.adaptor.codes import CODEBOOK_FILE, KnowledgeCodebook, KnowledgeCodebooks
from kar.errors import ConfigError, FeatureStoreError
from kar.features import (
    KnowledgeServer,
    OnlineKnowledge,
    init_feature_repo,
    publish,
    training_set,
)
from kar.features.repo import enable_codes

DIM = 6
T1 = datetime(2024, 1, 1, tzinfo=UTC)
USERS = [f"u{i}" for i in range(24)]
ITEMS = [f"i{i}" for i in range(40)]


def _vectors(ids: list[str], seed: int, centres: int = 4) -> pl.DataFrame:
    """Vectors around ``centres`` well-separated points, so k-means has a clear answer."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((centres, DIM)).astype(np.float32) * 10
    x = points[np.arange(len(ids)) % centres] + rng.standard_normal((len(ids), DIM)) * 0.1
    return pl.DataFrame(
        {"entity_id": ids, "vector": list(x.astype(np.float32))},
        schema={"entity_id": pl.Utf8, "vector": pl.List(pl.Float32)},
    )


def _codes(codebooks: KnowledgeCodebooks, kind: str, frame: pl.DataFrame) -> dict[str, int]:
    assigned = codebooks.with_codes(kind, frame)
    return dict(zip(assigned["entity_id"], assigned["code"], strict=True))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = init_feature_repo(
        tmp_path_factory.mktemp("codes") / "fr", vector_dim=DIM, knowledge_codes=True
    )
    users, items = _vectors(USERS, 0), _vectors(ITEMS, 1)
    codebooks = KnowledgeCodebooks.fit(users, items, size=4, seed=0)
    report = publish(repo, users, items, T1, codebooks=codebooks)
    return {"repo": repo, "users": users, "items": items, "codebooks": codebooks, "report": report}


def test_codebook_clusters_and_round_trips(published: dict, tmp_path: Path) -> None:
    books, users = published["codebooks"], published["users"]
    user_codes = _codes(books, "user", users)
    assert set(user_codes.values()) == {1, 2, 3, 4}  # 0 stays "no knowledge"
    # entities generated around the same centre share a code, different centres do not
    for i, uid in enumerate(USERS):
        assert user_codes[uid] == user_codes[USERS[i % 4]]
    path = books.save(tmp_path / CODEBOOK_FILE)
    loaded = KnowledgeCodebooks.load(path)
    np.testing.assert_array_equal(loaded.user.centroids, books.user.centroids)
    np.testing.assert_array_equal(loaded.item.centroids, books.item.centroids)
    assert (loaded.size, loaded.seed, loaded.fingerprint) == (4, 0, books.fingerprint)
    # fit_or_load reuses a codebook fitted on the same vectors, refits on new ones
    items = published["items"]
    again = KnowledgeCodebooks.fit_or_load(path, users, items, 4, 0)
    np.testing.assert_array_equal(again.user.centroids, books.user.centroids)
    moved = _vectors(USERS, 7)
    refit = KnowledgeCodebooks.fit_or_load(path, moved, items, 4, 0)
    assert refit.fingerprint != books.fingerprint
    assert KnowledgeCodebooks.load(path).fingerprint == refit.fingerprint
    (tmp_path / "bad.npz").write_bytes(b"not a codebook")
    with pytest.raises(ConfigError, match="bad.npz"):
        KnowledgeCodebooks.load(tmp_path / "bad.npz")


def test_parts_hold_the_code_column(published: dict) -> None:
    repo, books = published["repo"], published["codebooks"]
    part = pl.read_parquet(next((repo / "data" / "item_knowledge").glob("*.parquet")))
    assert part.columns == [
        "item_id",
        "item_knowledge_vector",
        "item_knowledge_code",
        "event_timestamp",
        "created",
    ]
    assert part.schema["item_knowledge_code"] == pl.Int64
    expected = _codes(books, "item", published["items"])
    assert dict(zip(part["item_id"], part["item_knowledge_code"], strict=True)) == expected


def test_training_set_returns_the_codes(published: dict) -> None:
    books = published["codebooks"]
    users, items = (
        _codes(books, "user", published["users"]),
        _codes(books, "item", published["items"]),
    )
    after, before = T1 + timedelta(days=1), T1 - timedelta(days=1)
    entity_df = pl.DataFrame(
        {
            "user_id": ["u3", "u10", "ghost", "u5"],
            "item_id": ["i7", "nope", "i0", "i2"],
            "event_timestamp": [after, after, after, before],
        }
    )
    out = training_set(published["repo"], entity_df)
    assert out.schema["user_knowledge_code"] == pl.Int64
    assert out.schema["item_knowledge_code"] == pl.Int64
    assert out["user_knowledge_code"].to_list() == [users["u3"], users["u10"], None, None]
    assert out["item_knowledge_code"].to_list() == [items["i7"], None, items["i0"], None]


def test_online_reads_return_the_codes(published: dict) -> None:
    books = published["codebooks"]
    users, items = (
        _codes(books, "user", published["users"]),
        _codes(books, "item", published["items"]),
    )
    candidates = ["i9", "nope", "i0", "i9"]
    expected = [items["i9"], 0, items["i0"], items["i9"]]
    online = OnlineKnowledge(published["repo"]).get("u6", candidates)
    served = KnowledgeServer(published["repo"]).get("u6", candidates)
    for batch in (online, served):
        assert batch.user_code == users["u6"]
        assert batch.item_codes.tolist() == expected
        assert batch.items_missing.tolist() == [False, True, False, False]
    ghost = KnowledgeServer(published["repo"]).get("ghost", [])
    assert ghost.user_missing and ghost.user_code == 0 and ghost.item_codes.shape == (0,)


def test_bad_codes_and_repos_without_codes_are_clear_errors(tmp_path: Path) -> None:
    repo = init_feature_repo(tmp_path / "with", vector_dim=DIM, knowledge_codes=True)
    bad = _vectors(["a", "b"], 0).with_columns(code=pl.Series([3, 0]))
    with pytest.raises(FeatureStoreError, match=r"user 'b'.*'code'.*1\.\.k"):
        publish(repo, bad, None, T1)
    text = _vectors(["a"], 0).with_columns(code=pl.lit("x"))
    with pytest.raises(FeatureStoreError, match="'code' must hold integer"):
        publish(repo, text, None, T1)
    assert not list((repo / "data").rglob("*.parquet"))

    plain = init_feature_repo(tmp_path / "plain", vector_dim=DIM)
    coded = _vectors(["a"], 0).with_columns(code=pl.lit(1))
    with pytest.raises(FeatureStoreError, match="no code field"):
        publish(plain, coded, None, T1)
    publish(plain, _vectors(["a"], 0), None, T1, materialize=False)
    with pytest.raises(FeatureStoreError, match="without codes"):
        enable_codes(plain)  # its parts have no code column: the glob would drop it


def test_refresh_assigns_codes_with_the_saved_codebook(tmp_path: Path) -> None:
    """The refresh stages after encoding (adapt -> codes -> offline part -> push online)
    use the codebook ``kar publish`` saved; new vectors are not clustered afresh."""
    from kar.project import ProjectFolder, ProjectSettings
    from kar.refresh.run import assign_codes, write_offline
    from kar.refresh.state import PendingRun

    project = ProjectFolder(tmp_path / "p", ProjectSettings())
    init_feature_repo(project.feature_repo, vector_dim=DIM, knowledge_codes=True)
    centres = np.eye(3, DIM, dtype=np.float32) * 10  # code c <-> unit axis c - 1
    saved = KnowledgeCodebooks(KnowledgeCodebook(centres), KnowledgeCodebook(centres), size=3)
    saved.save(project.knowledge_dir / CODEBOOK_FILE)

    # New vectors all near the third centre: the saved codebook gives code 3 to each; a
    # codebook refitted on them would split them into three codes.
    rng = np.random.default_rng(5)
    near = centres[2] + rng.standard_normal((6, DIM)).astype(np.float32)
    users = pl.DataFrame(
        {"entity_id": [f"n{i}" for i in range(6)], "vector": list(near)},
        schema={"entity_id": pl.Utf8, "vector": pl.List(pl.Float32)},
    )
    items = users.head(2).with_columns(pl.Series("entity_id", ["x0", "x1"]))
    users, items = assign_codes(project, users, items)
    assert users["code"].to_list() == [3] * 6 and items["code"].to_list() == [3, 3]
    _, none = assign_codes(project, users, items.head(0))  # a run with users only
    assert none.height == 0 and none.schema["code"] == pl.Int64

    wm = datetime(2030, 1, 1, tzinfo=UTC)
    run = PendingRun(1, "demo:data", None, wm, users["entity_id"].to_list(), [], 6, wm)
    files, rows = write_offline(project.feature_repo, run, users, items)
    assert rows == 8
    part = pl.read_parquet(files[0])
    assert part["user_knowledge_code"].to_list() == [3] * 6

    from kar.features import apply_repo, push_online

    apply_repo(project.feature_repo)
    assert push_online(project.feature_repo, users, items) == 8
    batch = OnlineKnowledge(project.feature_repo).get("n4", ["x1", "x0"])
    assert batch.user_code == 3 and batch.item_codes.tolist() == [3, 3]

    # codes switched off at publish (no codebook saved): refresh publishes none
    (project.knowledge_dir / CODEBOOK_FILE).unlink()
    plain_users, _ = assign_codes(project, users.drop("code"), items.drop("code"))
    assert "code" not in plain_users.columns
