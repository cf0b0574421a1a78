"""ReLLa: semantic behaviour retrieval (point-in-time, most similar, time order) and the LLM
ranker on the real bundled SmolLM2 (its yes / no answer logits), `kar rank` on a demo project."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import kar
from kar.data.schema import INTERACTION_SCHEMA, Dataset, Split
from kar.errors import ConfigError
from kar.models.inputs import (
    CTRFeatures,
    ItemSimilarity,
    behaviour_sequences,
    retrieved_sequences,
)
from kar.ranking.llm_ranker import (
    LogprobChat,
    OpenAIRanker,
    TransformersRanker,
    logprob_yes_probability,
    yes_probability,
)


def interactions(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    """(user, item, epoch seconds) rows; label 1, rating 5."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [datetime.fromtimestamp(r[2], UTC) for r in rows],
            "rating": [5.0] * len(rows),
            "label": [1] * len(rows),
        },
        schema=INTERACTION_SCHEMA,
    )


def vectors(table: dict[str, list[float]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"entity_id": list(table), "vector": [np.asarray(v, np.float32) for v in table.values()]}
    )


# item vectors: "t" is the target; "twin" is identical to it, "near*" close, "far*" not
VECTORS = vectors(
    {
        "t": [1.0, 0.0, 0.0],
        "twin": [1.0, 0.0, 0.0],
        "near1": [0.9, 0.1, 0.0],
        "near2": [0.8, 0.3, 0.0],
        "far1": [0.0, 1.0, 0.0],
        "far2": [0.0, 0.0, 1.0],
        "far3": [-0.5, 0.5, 0.5],
    }
)


def items_of(rows: pl.DataFrame, seq: np.ndarray) -> list[list[str | None]]:
    ids = rows["item_id"].to_list()
    return [[ids[r] if r >= 0 else None for r in row] for row in seq]


def test_retrieval_is_point_in_time_most_similar_in_time_order_and_padded() -> None:
    events = interactions(
        [
            ("u", "near1", 1), ("u", "far1", 2), ("u", "near2", 3), ("u", "far2", 4),
            ("u", "far3", 5),
            ("u", "twin", 6),  # the sample's own second: not before it
            ("u", "twin", 7),  # after it
            ("v", "twin", 1),  # another user's
        ]
    )  # fmt: skip
    samples = interactions([("u", "t", 6), ("w", "t", 6)])  # w: no history at all
    similarity = ItemSimilarity.from_frame(VECTORS)

    def pick(length: int, window: int = 200) -> list[list[str | None]]:
        return items_of(events, retrieved_sequences(events, samples, length, similarity, window))

    assert pick(2) == [["near1", "near2"], [None, None]]  # the two most similar, time order
    # far1 and far2 tie (cosine 0): the more recent one, far2, is taken
    assert pick(3) == [["near1", "near2", "far2"], [None] * 3]
    assert pick(7)[0] == [None, None, "near1", "far1", "near2", "far2", "far3"]  # all 5, padded
    assert "twin" not in {i for row in pick(7) for i in row}
    # only the last `window` prior interactions are ranked
    assert pick(2, window=3) == [["near2", "far2"], [None, None]]
    # the same as the last `length` when the window is that long
    assert pick(2, window=2) == items_of(events, behaviour_sequences(events, samples, 2))


def brute_force(
    events: pl.DataFrame, samples: pl.DataFrame, length: int, unit: dict[str, np.ndarray] | None,
    window: int,
) -> list[list[int]]:  # fmt: skip
    """Per sample, by hand: the user's rows strictly before it (ties in row order), the last
    ``window``; recent: the last ``length``; retrieved: most similar first (ties to the
    later), the best ``length`` put back in time order; -1 padding first."""
    users, items = events["user_id"].to_list(), events["item_id"].to_list()
    times = events["timestamp"].to_list()
    out = []
    for user, item, ts in samples.select("user_id", "item_id", "timestamp").iter_rows():
        prior = sorted(
            (times[r], r) for r in range(len(users)) if users[r] == user and times[r] < ts
        )
        rows = [r for _, r in prior][-window:]
        if unit is None:
            chosen = rows[-length:]
        else:
            target = unit.get(item)

            def sim(r: int, target: np.ndarray | None = target) -> float:
                vec = unit.get(items[r])
                return -2.0 if target is None or vec is None else float(target @ vec)

            ranked = sorted(range(len(rows)), key=lambda p: (-sim(rows[p]), -p))[:length]
            chosen = [rows[p] for p in sorted(ranked)]
        out.append([-1] * (length - len(chosen)) + chosen)
    return out


def random_events(seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Events on a coarse clock (ties at every second), samples, vectors for most items."""
    rng = np.random.default_rng(seed)
    n = 400
    rows = [
        (f"u{rng.integers(6)}", f"i{rng.integers(30)}", int(rng.integers(40))) for _ in range(n)
    ]
    events = interactions(rows)
    samples = interactions(
        [(f"u{rng.integers(7)}", f"i{rng.integers(32)}", int(rng.integers(42))) for _ in range(60)]
    )
    table = {f"i{j}": rng.normal(size=8).tolist() for j in range(30) if j % 7}  # i0, i7, ... none
    return events, samples, vectors(table)


@pytest.mark.parametrize("seed", [0, 1])
def test_recent_and_retrieved_match_a_brute_force_reference(seed: int) -> None:
    events, samples, table = random_events(seed)
    ids, matrix = table["entity_id"].to_list(), np.stack(table["vector"].to_list())
    unit = {i: v / np.linalg.norm(v) for i, v in zip(ids, matrix, strict=True)}
    recent = behaviour_sequences(events, samples, 5)
    assert recent.tolist() == brute_force(events, samples, 5, None, 5)
    similarity = ItemSimilarity.from_frame(table)
    got = retrieved_sequences(events, samples, 5, similarity, window=12)
    assert got.tolist() == brute_force(events, samples, 5, unit, 12)


def test_similarity_over_distinct_candidates_equals_the_full_table() -> None:
    similarity = ItemSimilarity.from_frame(random_events(0)[2])
    codes = np.array([[3, 0, 5], [3, 3, 7]])  # 6 cells < 31 items: the distinct-candidate path
    sims = similarity.pairs(np.array([5, 0]), codes)
    expected = similarity.unit[5] @ similarity.unit[[3, 0, 5]].T
    assert np.allclose(sims[0], np.where(codes[0] > 0, expected, -2.0), atol=1e-6)
    assert (sims[1] == -2.0).all()  # a target without a vector


def toy_split() -> tuple[Dataset, Split]:
    history = interactions([("u", "near1", 1), ("u", "far1", 2), ("v", "far2", 1)])
    train = interactions([("u", "near2", 3), ("u", "far2", 4), ("v", "near1", 4)])
    valid = interactions([("u", "far3", 5)])
    test = interactions([("u", "t", 6), ("v", "twin", 6)])
    names = VECTORS["entity_id"].to_list()
    items = pl.DataFrame(
        {"item_id": names, "title": names, "year": [2000] * len(names),
         "genres": [["Drama"]] * len(names), "creator": [None] * len(names)},
        schema_overrides={"year": pl.Int32, "creator": pl.Utf8},
    )  # fmt: skip
    users = pl.DataFrame({"user_id": ["u", "v"]})
    as_of = pl.DataFrame({"user_id": ["u", "v"], "as_of": [None, None]})
    ds = Dataset("toy", pl.concat([history, train, valid, test]), items, users)
    return ds, Split(history, train, valid, test, as_of)


def test_features_recent_is_the_default_and_retrieved_reads_the_vectors() -> None:
    ds, split = toy_split()
    default = CTRFeatures.build(ds, split, history_len=2)
    recent = CTRFeatures.build(ds, split, history_len=2, history_selection="recent",
                               item_vectors=VECTORS)  # fmt: skip
    for name in ("train", "valid", "test"):
        for key, array in default.arrays[name].items():
            assert np.array_equal(array, recent.arrays[name][key]), (name, key)
    retrieved = CTRFeatures.build(
        ds, split, history_len=2, history_selection="retrieved", item_vectors=VECTORS
    )
    index = dict(
        zip(*(retrieved.items[c].to_list() for c in ("item_id", "item_id_idx")), strict=True)
    )
    test = retrieved.arrays["test"]
    # u at t=6: near1, near2 retrieved (recent: far2, far3); v: far2, near1 (all it has)
    assert test["history"][0].tolist() == [index["near1"], index["near2"]]
    assert default.arrays["test"]["history"][0].tolist() == [index["far2"], 0]  # far3: valid only
    assert test["history_label"][0].tolist() == [2, 2]
    assert retrieved.meta["history_selection"] == "retrieved"
    with pytest.raises(ConfigError, match="needs item vectors"):
        CTRFeatures.build(ds, split, history_len=2, history_selection="retrieved")
    with pytest.raises(ConfigError, match="history selection 'latest'"):
        CTRFeatures.build(ds, split, history_selection="latest", item_vectors=VECTORS)  # type: ignore[arg-type]


# -- the ranker -----------------------------------------------------------------------------


def test_yes_probability_is_a_softmax_over_the_answer_tokens() -> None:
    logits = np.array([[2.0, 0.0, 1.0]])
    p = yes_probability(logits[:, :2], logits[:, 2:])
    assert p[0] == pytest.approx((np.exp(2) + 1) / (np.exp(2) + 1 + np.exp(1)))
    assert yes_probability(np.full((1, 1), -np.inf), np.full((1, 1), -np.inf))[0] == 0.5
    assert logprob_yes_probability({"Yes": -0.1, " no": -2.5, "Maybe": -4.0}) == pytest.approx(
        1 / (1 + np.exp(-2.4))
    )
    assert logprob_yes_probability({"No": -0.01, "Sure": -5.0}) == pytest.approx(
        1 / (1 + np.exp(5.0 - 0.01))
    )  # "yes" unlisted: at most the smallest listed


@pytest.fixture(scope="module")
def ranker() -> TransformersRanker:
    return TransformersRanker(dtype="float32", batch_size=4)  # float32: exact comparisons


def test_ranker_reads_the_yes_no_logits_of_the_bundled_model(ranker: TransformersRanker) -> None:
    import torch

    tok = ranker.backend.tokenizer
    assert {tok.decode([i]).strip() for i in ranker.yes_ids} == {"yes", "Yes"}
    assert {tok.decode([i]).strip().lower() for i in ranker.no_ids} == {"no"}
    prompts = [
        "Answer: yes",
        "Answer: no",
        'The user rated "Heat" (1995) 5/5. Will the user like the movie "Ronin"? Answer yes or no.',
    ]
    scores = ranker.score(prompts)  # one left-padded batch of three lengths
    assert scores[0] > 0.5 > scores[1]  # a prompt that states the answer ranks above its opposite
    for prompt, score in zip(prompts, scores, strict=True):
        ids = tok([ranker.render(prompt)], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            last = ranker.backend.model(**ids).logits[0, -1].double()
        answers = torch.softmax(last[ranker.yes_ids + ranker.no_ids], dim=0)
        assert score == pytest.approx(float(answers[: len(ranker.yes_ids)].sum()), abs=1e-4)
    assert ranker.prompt_tokens > 0


class FakeLogprobServer(BaseHTTPRequestHandler):
    """A FAKE OpenAI-compatible server (test only): answers every chat completion with one
    token and fixed top_logprobs, and keeps the requests it got."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLogprobServer.requests.append(body)
        yes = -0.2 if "like" in body["messages"][0]["content"] else -3.0
        top = [{"token": "Yes", "logprob": yes}, {"token": " no", "logprob": -1.0}]
        reply = {
            "choices": [{"message": {"content": "Yes"}, "finish_reason": "length",
                         "logprobs": {"content": [{"token": "Yes", "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1},
        }  # fmt: skip
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_openai_ranker_asks_for_logprobs_and_scores_from_them() -> None:
    server = HTTPServer(("127.0.0.1", 0), FakeLogprobServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chat = LogprobChat("fake-model", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                           api_key_env=None, max_retries=0)  # fmt: skip
        scores = OpenAIRanker(chat).score(["will they like it?", "something else"])
    finally:
        server.shutdown()
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-0.8)))
    assert scores[1] == pytest.approx(1 / (1 + np.exp(2.0)))
    sent = FakeLogprobServer.requests[0]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 20 and sent["max_tokens"] == 1


# -- a demo project ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> kar.Project:
    return kar.Project.init(tmp_path_factory.mktemp("rella"), n_users=16)


def test_kar_rank_prints_both_aucs(demo: kar.Project) -> None:
    from kar.cli import app

    result = CliRunner().invoke(
        app, ["rank", "-p", str(demo.root), "-n", "16", "-k", "5", "--batch-size", "8"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("16 sampled test rows" in line for line in lines)
    for name in ("recent-5", "retrieved-5"):
        line = next(line for line in lines if line.startswith(f"{name}: AUC "))
        assert 0.0 <= float(line.split()[2]) <= 1.0


def test_a_project_with_retrieved_history_trains(demo: kar.Project) -> None:
    from kar.models.train import train_ctr
    from kar.pipeline import ctr_features

    demo.settings.training.history_selection = "retrieved"
    demo.folder.save()
    project = kar.Project(demo.root)  # what the CLI reads back
    assert project.settings.training.history_selection == "retrieved"
    features = ctr_features(project.folder, project.dataset, project.split, with_knowledge=False)
    assert features.meta["history_selection"] == "retrieved"
    recent = CTRFeatures.build(project.dataset, project.split, history_len=features.history_len)
    assert not np.array_equal(features.arrays["test"]["history"], recent.arrays["test"]["history"])
    assert np.array_equal(  # the same interactions, another choice among them
        (features.arrays["test"]["history_label"] > 0).sum(1),
        (recent.arrays["test"]["history_label"] > 0).sum(1),
    )
    result = train_ctr(features, "din", {"max_epochs": 1}, seed=0)
    assert 0.0 <= result.valid_auc <= 1.0 and result.epochs_run == 1
    bad = demo.root / "kar.yaml"
    bad.write_text(bad.read_text().replace("history_selection: retrieved", "history_selection: x"))
    with pytest.raises(ConfigError):
        kar.Project(demo.root)


def test_history_selection_names_the_logged_runs(tmp_path) -> None:
    """Runs logged with recent histories are not reused once a project retrieves them (the
    data fingerprint changes), and a recent project keeps the fingerprint it had."""
    from kar.pipeline import data_fingerprint, init_project

    folder = init_project(tmp_path / "p", n_users=10)
    recent = data_fingerprint(folder)
    folder.settings.training.history_selection = "retrieved"
    assert data_fingerprint(folder) != recent
    folder.settings.training.history_selection = "recent"
    assert data_fingerprint(folder) == recent
