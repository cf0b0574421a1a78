"""Item embeddings: :class:`~kar.encoding.TextEncoder` with the defaults of item retrieval.

- ``pooling="token"`` (HLLM / NoteLLM; the default for a causal LM): the text is followed by
  a short prompt ending in the special token ``[ITEM]``; the item embedding is the last
  hidden state at that token's position (:mod:`kar.encoding.pooling`).
- ``pooling="mean"`` (the default for an encoder), ``"last"``, ``"cls"``: as the encoder's.

Models: ``None`` or ``"minilm"`` is the bundled all-MiniLM-L6-v2; ``"smollm2"`` the bundled
SmolLM2-135M-Instruct; any other value a local HF folder. torch and transformers are
imported on first use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kar.encoding.cache import VectorCache
from kar.encoding.encoder import TextEncoder
from kar.encoding.pooling import ITEM_TOKEN, TOKEN_PROMPT, Pooling, token_pool, token_positions
from kar.errors import DataValidationError, KarError

__all__ = [
    "ITEM_TOKEN",
    "TOKEN_PROMPT",
    "ItemEmbedder",
    "is_causal_lm",
    "resolve_embedding_model",
    "token_pool",
    "token_positions",
]


def resolve_embedding_model(model: str | Path | None) -> Path:
    """The HF folder of ``None``/``"minilm"``, ``"smollm2"`` or a local folder."""
    if model is None or str(model).lower() in {"minilm", "all-minilm-l6-v2"}:
        from kar.encoding import default_model_dir

        return default_model_dir()
    from kar.generation.model_files import is_bundled, resolve_model

    if is_bundled(model):
        return resolve_model(None)
    path = Path(model).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise KarError(
            f"embedding model {str(model)!r} is neither 'minilm', 'smollm2' nor a local Hugging "
            "Face folder with config.json (kar does not download models)"
        )
    return path.resolve()


def is_causal_lm(folder: Path) -> bool:
    """Whether the folder's config names a causal LM (decoder): token pooling by default."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KarError(f"{folder / 'config.json'}: cannot read: {exc}") from exc
    return any("CausalLM" in a for a in config.get("architectures") or [])


class ItemEmbedder(TextEncoder):
    """The text encoder for item texts: model names of the embedding stage, token pooling
    for a causal LM by default, blank texts refused, and ``save`` for tuned weights."""

    def __init__(
        self,
        model: str | Path | None = None,
        pooling: Pooling | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        normalize: bool = True,
        threads: int = 1,
        cache: VectorCache | None = None,
    ) -> None:
        if max_length < 8:
            raise KarError(f"max_length must be >= 8, got {max_length}")
        folder = resolve_embedding_model(model)
        pooling = pooling or ("token" if is_causal_lm(folder) else "mean")
        super().__init__(
            folder,
            pooling=pooling,
            max_length=max_length,
            batch_size=batch_size,
            normalize=normalize,
            cache=cache,
            threads=threads,
        )

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """float32 (len(texts), dim), row i for texts[i]; a blank text is an error."""
        if isinstance(texts, str):
            raise KarError("embed() takes a sequence of texts, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataValidationError(
                    "item text is empty or not a string", row=i + 1, field="text"
                )
        return self.encode(texts, progress=progress)

    def save(self, directory: Path) -> Path:
        """Write the (tuned) model and tokenizer as an HF folder that loads by path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    def __repr__(self) -> str:
        return f"ItemEmbedder({self.model_id!r})"
