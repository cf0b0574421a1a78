"""SASRec and text-SASRec (kar.embedding.sasrec): learns a sequential pattern, is causal,
scores cold items through their text, keeps the epoch chosen on validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kar.embedding import evaluate as ev  # noqa: E402
from kar.embedding.sasrec import (  # noqa: E402
    SASRecConfig,
    sasrec_scorer,
    train_sasrec,
    training_windows,
)
from kar.errors import KarError  # noqa: E402

N_ITEMS = 40
SMALL = SASRecConfig(
    max_len=12, hidden=32, blocks=1, heads=2, dropout=0.1, lr=5e-3, batch_size=32, epochs=25
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cycle_sequences(order: np.ndarray, n_users: int, length: int, seed: int) -> list[np.ndarray]:
    """Each user walks the cycle ``order`` from a random start: the next item is determined
    by the current one."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(len(order), size=n_users)
    return [order[(s + np.arange(length)) % len(order)] for s in starts]


def events_of(histories: list[np.ndarray], targets: list[int], warm: np.ndarray) -> ev.Events:
    targets_a = np.array(targets, dtype=np.int64)
    return ev.Events(
        [str(i) for i in range(len(warm))],
        [str(u) for u in range(len(targets))],
        targets_a,
        histories,
        ~warm[targets_a],
        warm,
    )


def test_learns_a_deterministic_next_item_pattern():
    order = np.random.default_rng(0).permutation(N_ITEMS)
    model = train_sasrec(cycle_sequences(order, 80, 15, seed=1), N_ITEMS, SMALL, progress=False)
    held_out = cycle_sequences(order, 50, 9, seed=2)  # unseen starts and lengths
    events = events_of([s[:-1] for s in held_out], [int(s[-1]) for s in held_out], model.warm)
    metrics, _ = ev.evaluate(events, sasrec_scorer(model))
    assert metrics.recall10 > 0.9  # chance: about 10 / 32 unseen candidates
    assert metrics.ndcg10 > 0.7


def test_attention_is_causal():
    order = np.random.default_rng(3).permutation(N_ITEMS)
    model = train_sasrec(
        cycle_sequences(order, 20, 12, seed=4), N_ITEMS, replace(SMALL, epochs=1), progress=False
    )
    seq = order[:10].copy()
    changed = seq.copy()
    changed[6:] = order[20:24]  # positions 6.. replaced
    before, after = model.position_scores(seq), model.position_scores(changed)
    np.testing.assert_allclose(before[:6], after[:6], rtol=1e-5, atol=1e-5)
    assert not np.allclose(before[6:], after[6:], atol=1e-3)
    earlier = seq.copy()
    earlier[2] = order[30]  # a change before position 6 reaches it
    assert not np.allclose(model.position_scores(earlier)[6], before[6], atol=1e-3)


def test_text_sasrec_scores_a_cold_item_through_its_text():
    rng = np.random.default_rng(5)
    order = rng.permutation(N_ITEMS)
    text = rng.normal(size=(N_ITEMS + 5, 24)).astype(np.float32)
    # items 40..44 never occur in training; each one's text is a near copy of the item that
    # follows some item k in the cycle
    ks = order[[3, 11, 19, 27, 35]]
    successors = order[[4, 12, 20, 28, 36]]
    text[N_ITEMS:] = text[successors] + 0.05 * rng.normal(size=(5, 24))
    sequences = cycle_sequences(order, 80, 15, seed=6)
    n_items = N_ITEMS + 5
    cfg = replace(SMALL, items="text+id", id_dropout=0.5)
    text_model = train_sasrec(sequences, n_items, cfg, text_vectors=text, progress=False)
    id_model = train_sasrec(sequences, n_items, SMALL, progress=False)
    assert not text_model.warm[N_ITEMS:].any()
    # a history ending in k whose true next item is the cold look-alike of k's successor
    histories = [order[(np.flatnonzero(order == k)[0] - 5 + np.arange(6)) % N_ITEMS] for k in ks]
    cold = list(range(N_ITEMS, n_items))
    events = events_of(histories, cold, text_model.warm)
    text_all, text_cold = ev.evaluate(events, sasrec_scorer(text_model))
    assert text_cold.n == 5
    assert text_cold.recall10 >= 0.8  # chance: about 10 / 39 unseen candidates
    ranks = ev.ranks(events, sasrec_scorer(text_model))
    assert np.mean(ranks) <= 3  # next to the warm look-alike at the top
    _, id_cold = ev.evaluate(events, sasrec_scorer(id_model))
    assert id_cold.recall10 == 0.0  # an ID model has no row for a cold item
    assert np.isneginf(id_model.scores(histories)[:, N_ITEMS:]).all()


def test_the_epoch_chosen_on_validation_is_kept():
    order = np.random.default_rng(7).permutation(N_ITEMS)
    sequences = cycle_sequences(order, 30, 12, seed=8)
    probe = [order[:6]]
    scripted = iter([0.1, 0.5, 0.2, 0.3, 0.4, 0.9, 0.9])
    snapshots: list[np.ndarray] = []

    def evaluate(model) -> float:
        snapshots.append(model.scores(probe))
        return next(scripted)

    cfg = replace(SMALL, epochs=20, eval_every=1, patience=3)
    model = train_sasrec(sequences, N_ITEMS, cfg, evaluate=evaluate, progress=False)
    assert model.best_epoch == 2
    assert len(model.history) == 5  # stopped after 3 scores without improvement
    assert [h["epoch"] for h in model.history] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(model.scores(probe), snapshots[1], rtol=1e-5)
    assert not np.allclose(model.scores(probe), snapshots[-1], atol=1e-4)


def test_windows_cover_every_position_once():
    seq = np.arange(30)
    windows = training_windows([seq, np.arange(1)], max_len=12)
    targets = np.sort(np.concatenate([t for _, t in windows]))
    np.testing.assert_array_equal(targets, np.arange(1, 30))
    for inputs, target in windows:
        assert len(inputs) <= 12
        np.testing.assert_array_equal(target, inputs + 1)


def test_settings_are_checked():
    with pytest.raises(KarError):
        SASRecConfig(items="words")  # type: ignore[arg-type]
    with pytest.raises(KarError, match="text_vectors"):
        train_sasrec([np.arange(5)], 5, SASRecConfig(items="text"), progress=False)


def test_beats_popularity_on_movielens(ml100k_dir):
    """Real data: a few epochs of SASRec on ML-100K's training-time sequences retrieve the
    next movie far better than the popularity baseline."""
    from kar.data.movielens import load_movielens
    from kar.data.split import make_time_split
    from kar.embedding.cooccur import training_interactions

    ds = load_movielens(ml100k_dir)
    split = make_time_split(ds)
    ids = sorted(ds.items["item_id"].to_list())
    index = {item: i for i, item in enumerate(ids)}
    sequences = [
        np.array([index[i] for i in g["item_id"].to_list()])
        for _, g in training_interactions(split).group_by("user_id", maintain_order=True)
    ]
    valid = ev.next_item_events(split, ids, "valid", max_events=600)
    cfg = SASRecConfig(max_len=50, hidden=48, blocks=1, dropout=0.3, lr=5e-3, epochs=10)
    model = train_sasrec(sequences, len(ids), cfg, progress=False)
    sasrec, _ = ev.evaluate(valid, sasrec_scorer(model))
    popularity, _ = ev.evaluate(valid, ev.popularity_scorer(split, ids))
    assert sasrec.recall10 > 1.5 * popularity.recall10  # measured: 0.127 vs 0.063
