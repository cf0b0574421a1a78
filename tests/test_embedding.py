"""kar.embedding: special-token pooling, training-time co-occurrence, resumable tuning,
the user tower, item text, and the next-item evaluation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.data.schema import Dataset
from kar.data.split import make_time_split
from kar.embedding.cooccur import cooccurrence_pairs, training_interactions
from kar.embedding.embedder import ITEM_TOKEN, ItemEmbedder, token_pool, token_positions
from kar.embedding.evaluate import metrics, next_item_events
from kar.embedding.text import item_text, item_texts
from kar.errors import DataValidationError, KarError

T0 = datetime(2024, 1, 1, tzinfo=UTC)


# --- special-token pooling ----------------------------------------------------------------


def test_token_pool_reads_the_row_of_the_special_token_under_any_padding() -> None:
    import torch

    token = 99
    ids = torch.tensor(
        [
            [5, 6, 7, token, 8, 0, 0],  # right padding
            [0, 0, 5, 6, token, 8, 9],  # left padding
            [token, 1, 2, 3, 4, 5, 6],  # first position
        ]
    )
    # hidden state = its own position, so the pooled value names the position it came from
    hidden = torch.arange(7, dtype=torch.float32)[None, :, None].expand(3, 7, 4)
    assert token_positions(ids, token).tolist() == [3, 4, 0]
    assert token_pool(hidden, ids, token)[:, 0].tolist() == [3.0, 4.0, 0.0]
    with pytest.raises(KarError, match=r"row 1 .*\[ITEM\]"):
        token_positions(torch.tensor([[token, 1], [1, 2]]), token)


@pytest.fixture(scope="module")
def smollm2() -> ItemEmbedder:
    try:
        embedder = ItemEmbedder("smollm2", normalize=False, max_length=48)
        return embedder.load()
    except KarError as exc:
        pytest.skip(f"bundled SmolLM2 not available: {exc}")


def test_llm_embedding_is_the_last_hidden_state_at_the_item_token(smollm2: ItemEmbedder) -> None:
    import torch

    assert smollm2.pooling == "token"
    texts = [
        "title Toy Story year 1995 genres Animation, Children's, Comedy",
        "title Heat",  # shorter: padded in the same batch
        "title " + "very long " * 40,  # truncated: the prompt and the token must survive
    ]
    vectors = smollm2.embed(texts)
    for i, text in enumerate(texts):
        ids = smollm2.tokenize([text])[0]
        assert len(ids) <= 48
        pos = ids.index(smollm2.token_id)
        assert smollm2.tokenizer.convert_ids_to_tokens(ids[pos]) == ITEM_TOKEN
        assert pos == len(ids) - 2  # the prompt ends with [ITEM] and a closing quote
        with torch.inference_mode():
            hidden = smollm2.model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        np.testing.assert_allclose(vectors[i], hidden[pos], rtol=1e-4, atol=1e-4)
        for shifted in (pos - 1, pos + 1):  # reading a neighbour must not pass
            assert not np.allclose(vectors[i], hidden[shifted], rtol=1e-3, atol=1e-3)


def test_encoder_embeddings_are_mean_pooled_and_normalised() -> None:
    embedder = ItemEmbedder()  # the bundled all-MiniLM-L6-v2
    assert embedder.pooling == "mean" and embedder.name == "all-MiniLM-L6-v2"
    a, b, c = embedder.embed(
        ["title Toy Story genres Animation", "title Toy Story 2 genres Animation", "title Heat"]
    )
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert a @ b > a @ c  # the sequel is nearer than an unrelated title
    with pytest.raises(DataValidationError, match="row 2"):
        embedder.embed(["title A", "  "])


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KarError, match="neither 'minilm', 'smollm2' nor a local"):
        ItemEmbedder(tmp_path / "nope")


# --- item text -------------------------------------------------------------------------------


def test_item_text_is_key_value_and_cannot_place_the_special_token() -> None:
    row = {"title": "Heat [ITEM]", "year": 1995, "genres": ["Crime", "Drama"], "creator": None}
    assert item_text(row, facts="Directed by Michael Mann.") == (
        "title Heat year 1995 genres Crime, Drama facts Directed by Michael Mann."
    )
    items = pl.DataFrame({"item_id": ["1", "2"], "title": ["Heat", None]})
    with pytest.raises(DataValidationError, match=r"row 2, field 'title'"):
        item_texts(items)


# --- co-occurrence: training-time interactions only -----------------------------------------


def _dataset() -> Dataset:
    """4 users: 8 early interactions each over shared items, then 4 late ones, the last
    two of which are always ("late_x", "late_y") back to back."""
    rows = []
    for u in range(4):
        for k in range(8):
            rows.append((f"u{u}", f"i{(u + k) % 6}", T0 + timedelta(days=k, hours=u)))
        for k, item in enumerate(["i0", f"i{u + 1}", "late_x", "late_y"]):
            if item in {r[1] for r in rows if r[0] == f"u{u}"}:
                item = f"fresh{u}_{k}"
            rows.append((f"u{u}", item, T0 + timedelta(days=100 + k, hours=u)))
    interactions = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "rating": [4.0] * len(rows),
            "label": [1] * len(rows),
        },
        schema={
            "user_id": pl.Utf8,
            "item_id": pl.Utf8,
            "timestamp": pl.Datetime("us", "UTC"),
            "rating": pl.Float64,
            "label": pl.Int8,
        },
    )
    ids = sorted(interactions["item_id"].unique().to_list())
    items = pl.DataFrame({"item_id": ids, "title": [f"Movie {i}" for i in ids]})
    return Dataset(
        "toy", interactions, items, pl.DataFrame({"user_id": [f"u{u}" for u in range(4)]})
    )


def test_cooccurrence_pairs_use_only_training_time_interactions() -> None:
    ds = _dataset()
    split = make_time_split(ds, history_fraction=0.25, valid_fraction=0.2, test_fraction=0.3)
    late = pl.concat([split.valid, split.test])
    assert {"late_x", "late_y"} <= set(late["item_id"].to_list())  # the trap is set
    pairs = cooccurrence_pairs(split, window=3, top_k=50)
    seen = {frozenset(p) for p in pairs.select("item_a", "item_b").iter_rows()}
    assert frozenset({"late_x", "late_y"}) not in seen
    train_items = set(training_interactions(split)["item_id"].to_list())
    assert set(pairs["item_a"]) | set(pairs["item_b"]) <= train_items
    assert not (set(pairs["item_a"]) | set(pairs["item_b"])) & set(late["item_id"]) - train_items
    # the same data with every interaction counted as training would give the late pair
    everything = make_time_split(ds, history_fraction=0.25, valid_fraction=0.0, test_fraction=0.0)
    all_pairs = cooccurrence_pairs(everything, window=3, top_k=50)
    assert frozenset({"late_x", "late_y"}) in {
        frozenset(p) for p in all_pairs.select("item_a", "item_b").iter_rows()
    }


def test_cooccurrence_score_is_windowed_and_damped_by_history_length() -> None:
    ds = _dataset()
    seq = pl.DataFrame(
        {
            "user_id": ["a"] * 3 + ["b"] * 2,
            "item_id": ["x", "y", "z", "x", "y"],
            "timestamp": [T0 + timedelta(days=d) for d in (0, 1, 2, 0, 1)],
        }
    ).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    empty = seq.head(0)
    from kar.data.schema import Split

    split = Split(history=seq, train=empty, valid=empty, test=empty, as_of=ds.users)
    pairs = {(a, b): s for a, b, s in cooccurrence_pairs(split, window=1, top_k=5).iter_rows()}
    assert pairs == pytest.approx({("x", "y"): 1 / 3 + 1 / 2, ("y", "z"): 1 / 3})
    wider = {(a, b) for a, b, _ in cooccurrence_pairs(split, window=2, top_k=5).iter_rows()}
    assert ("x", "z") in wider


# --- evaluation ------------------------------------------------------------------------------


def test_next_item_events_flag_cold_targets_and_see_only_the_past() -> None:
    ds = _dataset()
    split = make_time_split(ds, history_fraction=0.25, valid_fraction=0.2, test_fraction=0.3)
    ids = sorted(ds.items["item_id"].to_list())
    events = next_item_events(split, ids, "test")
    train_items = set(training_interactions(split)["item_id"].to_list())
    assert len(events) == split.test.height
    for user, target, hist, cold in zip(
        events.users, events.targets, events.histories, events.cold, strict=True
    ):
        assert cold == (ids[target] not in train_items)
        t = split.test.filter((pl.col("user_id") == user) & (pl.col("item_id") == ids[target]))
        earlier = ds.interactions.filter(
            (pl.col("user_id") == user) & (pl.col("timestamp") < t["timestamp"][0])
        )
        assert sorted(ids[i] for i in hist) == sorted(earlier["item_id"].to_list())
    assert events.cold.any()
    m = metrics(np.array([0, 9, 10, 60]))
    assert (m.recall10, m.recall50) == (0.5, 0.75)
    assert m.ndcg10 == pytest.approx((1 + 1 / np.log2(11)) / 4)


# --- tuning and the user tower ---------------------------------------------------------------


def test_tuning_resumes_from_its_checkpoint_to_the_same_weights(tmp_path: Path) -> None:
    import torch

    from kar.embedding.tune import HEAD, TuneConfig, load_tuned, tune_embeddings

    texts = {
        f"i{i}": f"title Movie number {i} genres {'Drama' if i % 2 else 'Comedy'}"
        for i in range(24)
    }
    pairs = pl.DataFrame(
        {"item_a": [f"i{i}" for i in range(0, 24, 2)], "item_b": [f"i{i}" for i in range(1, 24, 2)]}
    )
    config = TuneConfig(method="projection", epochs=2, batch_size=4, checkpoint_every=2)
    straight = tune_embeddings(ItemEmbedder(), texts, pairs, tmp_path / "a", config, progress=False)
    first = tune_embeddings(
        ItemEmbedder(), texts, pairs, tmp_path / "b", config, progress=False, stop_after_steps=4
    )
    assert first.steps == 4 and (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = tune_embeddings(ItemEmbedder(), texts, pairs, tmp_path / "b", config, progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == straight.steps == 6
    w_a = torch.load(tmp_path / "a" / HEAD)["state"]["weight"]
    w_b = torch.load(tmp_path / "b" / HEAD)["state"]["weight"]
    torch.testing.assert_close(w_a, w_b)
    assert not torch.allclose(w_a, torch.eye(w_a.shape[0]))  # it did train
    assert resumed.losses[-1] < resumed.losses[0] + 1e-6
    tuned = load_tuned(tmp_path / "b")
    v = tuned.embed([texts["i0"], texts["i1"], texts["i5"]])
    assert np.linalg.norm(v, axis=1) == pytest.approx([1, 1, 1], abs=1e-5)
    again = tune_embeddings(ItemEmbedder(), texts, pairs, tmp_path / "b", config, progress=False)
    assert again.steps == 6  # finished: nothing re-run


def test_user_tower_learns_a_sequential_rule_the_mean_cannot() -> None:
    from kar.embedding.tower import TowerConfig, train_user_tower

    rng = np.random.default_rng(0)
    n = 12
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    # every user walks the catalogue in order: the next item is always last + 1
    sequences = [np.arange(s, s + 8) % n for s in rng.integers(0, n, 60)]
    config = TowerConfig(
        max_len=4, d_model=32, layers=1, heads=2, epochs=30, batch_size=64, dropout=0.0
    )
    tower = train_user_tower(vectors, sequences, np.ones(n, dtype=bool), config, progress=False)
    histories = [np.array([(s + k) % n for k in range(4)]) for s in range(n)]
    scores = (
        tower.user_vectors(histories) @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T
    )
    hits = np.mean([np.argmax(scores[s]) == (s + 4) % n for s in range(n)])
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    mean_scores = np.stack([normed[h].mean(axis=0) for h in histories]) @ normed.T
    for s, h in enumerate(histories):
        mean_scores[s, h] = -np.inf
    mean_hits = np.mean([np.argmax(mean_scores[s]) == (s + 4) % n for s in range(n)])
    assert hits >= 0.9 > mean_hits


def test_info_nce_never_treats_a_repeat_of_the_anchor_or_positive_as_a_negative() -> None:
    import torch

    from kar.embedding.tune import info_nce

    rng = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(3, 8, generator=rng), dim=1)
    b = torch.nn.functional.normalize(torch.randn(3, 8, generator=rng), dim=1)
    ids_a, ids_b = torch.tensor([10, 11, 12]), torch.tensor([20, 10, 21])  # b_1 is a_0's item
    t = 0.1

    def ce(logits: torch.Tensor, keep: list[list[int]]) -> torch.Tensor:
        return torch.stack(
            [-torch.log_softmax(logits[i, keep[i]], 0)[keep[i].index(i)] for i in range(3)]
        ).mean()

    logits = a @ b.T / t
    # a_0 must not be pushed away from b_1 (same item); b_1's row must not push a_0 away
    expected = (
        ce(logits, [[0, 2], [0, 1, 2], [0, 1, 2]]) + ce(logits.T, [[0, 1, 2], [1, 2], [0, 1, 2]])
    ) / 2
    torch.testing.assert_close(info_nce(a, b, ids_a, ids_b, t), expected)
