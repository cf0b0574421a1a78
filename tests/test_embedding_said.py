"""SAID on the real bundled SmolLM2-135M (no mocks): the projection learns to make the frozen
LLM regenerate item texts, similar texts end close, the LLM never changes, an interrupted
run resumes, and ``kar embed said`` writes (and publishes) the item vectors."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from kar.cli import app
from kar.embedding.said import (
    FrozenLLM,
    SAIDConfig,
    fit_said,
    load_frozen_llm,
    text_loss,
    tokenize,
    train_said,
)

# near-duplicate pairs (rows 2i and 2i + 1): sequels and same-genre twins
PAIRS = [
    ("title The Godfather year 1972 genres Crime, Drama",
     "title The Godfather: Part II year 1974 genres Crime, Drama"),
    ("title Star Wars year 1977 genres Action, Sci-Fi",
     "title Star Wars: Return of the Jedi year 1983 genres Action, Sci-Fi"),
    ("title Toy Story year 1995 genres Animation, Comedy",
     "title Toy Story 2 year 1999 genres Animation, Comedy"),
    ("title Alien year 1979 genres Horror, Sci-Fi",
     "title Aliens year 1986 genres Horror, Sci-Fi"),
    ("title Die Hard year 1988 genres Action, Thriller",
     "title Die Hard 2 year 1990 genres Action, Thriller"),
    ("title Home Alone year 1990 genres Children's, Comedy",
     "title Home Alone 2 year 1992 genres Children's, Comedy"),
    ("title Sense and Sensibility year 1995 genres Drama, Romance",
     "title Pride and Prejudice year 1995 genres Drama, Romance"),
    ("title Batman year 1989 genres Action, Crime",
     "title Batman Returns year 1992 genres Action, Crime"),
]  # fmt: skip
TEXTS = [text for pair in PAIRS for text in pair]
CONFIG = SAIDConfig(soft_tokens=4, batch_size=4, epochs=8, lr=3e-3)


@pytest.fixture(scope="module")
def llm() -> FrozenLLM:
    torch.set_num_threads(1)
    return load_frozen_llm()


@pytest.fixture(scope="module")
def trained(llm: FrozenLLM, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(the LLM's parameters before training, the result of training on TEXTS)."""
    before = {name: p.detach().clone() for name, p in llm.model.named_parameters()}
    path = tmp_path_factory.mktemp("said") / "checkpoint.pt"
    return before, fit_said(TEXTS, CONFIG, path, progress=False, llm=llm)


def test_text_loss_is_the_llms_own_loss_on_the_text_after_the_prefix(llm: FrozenLLM) -> None:
    """Soft tokens equal to real token embeddings give the model's own next-token loss on
    the text (labels on the text only), with rows of different lengths padded."""
    model = llm.model
    prefix = llm.tokenizer("Movie:", add_special_tokens=False)["input_ids"]
    rows = tokenize(llm.tokenizer, [TEXTS[0], TEXTS[3]], 32)
    assert len(rows[0]) != len(rows[1]) and rows[0][-1] == llm.tokenizer.eos_token_id
    soft = model.get_input_embeddings()(torch.tensor([prefix, prefix]))
    with torch.no_grad():
        ours = float(text_loss(model, soft, rows))
        total, count = 0.0, 0
        for row in rows:
            ids = torch.tensor([prefix + row])
            labels = torch.tensor([[-100] * len(prefix) + row])
            total += float(model(input_ids=ids, labels=labels).loss) * len(row)
            count += len(row)
    assert ours == pytest.approx(total / count, rel=1e-4)


def test_the_projection_learns_to_make_the_frozen_llm_regenerate_item_texts(
    trained: tuple,
) -> None:
    result = trained[1]
    assert result.epochs_done == CONFIG.epochs and result.steps == CONFIG.epochs * 4
    assert result.first_loss is not None and len(result.losses) == CONFIG.epochs
    print(f"SAID loss: first batch {result.first_loss:.3f}, per epoch {result.losses}, "
          f"{result.seconds_per_epoch:.1f} s per epoch of {len(TEXTS)} items")  # fmt: skip
    assert result.losses[-1] < 0.6 * result.first_loss
    assert result.losses[-1] < result.losses[len(result.losses) // 2] < result.losses[0]


def test_items_with_similar_text_end_closer_than_random_pairs(trained: tuple) -> None:
    vectors = trained[1].vectors
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 576)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    cosine = vectors @ vectors.T
    partner = np.arange(len(TEXTS)) ^ 1
    near = cosine[np.arange(len(TEXTS)), partner].mean()
    other = ~np.eye(len(TEXTS), dtype=bool)
    other[np.arange(len(TEXTS)), partner] = False
    print(f"mean cosine: near-duplicate pairs {near:.3f}, other pairs {cosine[other].mean():.3f}")
    assert near > cosine[other].mean() + 0.15


def test_the_llm_is_frozen(trained: tuple, llm: FrozenLLM) -> None:
    before = trained[0]
    for name, param in llm.model.named_parameters():
        assert not param.requires_grad and param.grad is None, name
        assert torch.equal(param, before[name]), name


def test_an_interrupted_run_resumes_from_its_checkpoint(llm: FrozenLLM, tmp_path: Path) -> None:
    texts, config = TEXTS[:8], SAIDConfig(batch_size=4, epochs=2, checkpoint_every=100)
    whole = fit_said(texts, config, tmp_path / "whole.pt", progress=False, llm=llm)
    path = tmp_path / "cut.pt"
    one = fit_said(texts, config, path, progress=False, llm=llm, stop_after_steps=2)
    assert (one.epochs_done, one.steps, one.resumed_from) == (1, 2, 0)
    mid = fit_said(texts, config, path, progress=False, llm=llm, stop_after_steps=1)
    assert (mid.epochs_done, mid.steps, mid.resumed_from) == (1, 3, 2)  # mid-epoch
    rest = fit_said(texts, config, path, progress=False, llm=llm)
    assert (rest.epochs_done, rest.steps, rest.resumed_from) == (2, 4, 3)
    assert rest.losses == pytest.approx(whole.losses, rel=1e-6)
    np.testing.assert_allclose(rest.vectors, whole.vectors, atol=1e-6)
    # a finished run is not repeated (the LLM is not even loaded): the same vectors
    again = train_said(texts, config, path, progress=False)
    np.testing.assert_array_equal(again, rest.vectors)
    # other texts do not resume someone else's checkpoint
    other = fit_said(TEXTS[8:16], config, path, progress=False, llm=llm, stop_after_steps=1)
    assert (other.resumed_from, other.steps) == (0, 1)


def _pgvector() -> str | None:
    """Why Feast vector search cannot run here, or None when it can."""
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=2) as c:
            row = c.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL not reachable at 127.0.0.1:5432/test ({exc}); run .ci/run"
    return None if row else "pgvector is not installed on the PostgreSQL server (.ci/run)"


def test_kar_embed_said_writes_and_publishes_item_vectors(tmp_path: Path) -> None:
    from kar.embedding.feast_repo import online_vector
    from kar.encoding import EntityVectors
    from kar.features.repo import feature_store

    runner, target = CliRunner(), tmp_path / "proj"
    assert runner.invoke(app, ["init", str(target), "--users", "5"]).exit_code == 0
    config = yaml.safe_load((target / "kar.yaml").read_text())
    feast = {"project": f"kar_emb_said_{uuid.uuid4().hex[:8]}"}
    said = {"epochs": 1, "soft_tokens": 2, "max_text_tokens": 8, "batch_size": 16}
    config["embedding"] = {"said": said, "feast": feast}
    (target / "kar.yaml").write_text(yaml.safe_dump(config))
    out = runner.invoke(app, ["embed", "said", "-p", str(target), "--no-publish"])
    assert out.exit_code == 0, out.output
    assert "SAID: 1 epoch(s), 19 steps" in out.output and "576-dim" in out.output
    items = EntityVectors.load(target / "artifacts" / "embedding" / "items")
    assert items.encoder_id.startswith("said(") and items.dim == 576
    assert (target / "artifacts" / "embedding" / "said" / "checkpoint.pt").is_file()
    reason = _pgvector()
    if reason is not None:
        pytest.skip(f"vectors written; Feast publishing not checked: {reason}")
    try:  # a finished run is not repeated: publishing reads the same vectors
        out = runner.invoke(app, ["embed", "said", "-p", str(target)])
        assert out.exit_code == 0 and "published" in out.output, out.output
        repo = target / "embedding_repo"
        for item_id in items.items["entity_id"].to_list()[:5]:
            saved = items.matrix("item", [item_id])[0][0]
            np.testing.assert_allclose(online_vector(repo, "item", item_id), saved, atol=1e-6)
    finally:
        try:
            store = feature_store(target / "embedding_repo")
            store.provider.teardown_infra(store.project, store.list_feature_views(), [])
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"teardown failed: {exc}")
