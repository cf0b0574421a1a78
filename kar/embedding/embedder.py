"""Item embeddings from a local HF model: a decoder LLM read at a special token, or an encoder.

- ``pooling="token"`` (HLLM / NoteLLM): the text is followed by a short prompt ending in the
  special token ``[ITEM]`` (added to the tokenizer; its input embedding starts as the mean of
  the vocabulary's); the item embedding is the last hidden state at that token's position.
- ``pooling="mean"``: mean of the last hidden states over the real tokens (sentence encoders).
- ``pooling="last"``: the last real token's state, no special token (an ablation).

Defaults: ``model=None`` or ``"minilm"`` is the bundled all-MiniLM-L6-v2 (mean pooling);
``"smollm2"`` is the bundled SmolLM2-135M-Instruct (token pooling); any other value is a
local HF folder (token pooling for a causal LM, mean otherwise). torch and transformers
are imported on first use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kar.errors import DataValidationError, KarError

if TYPE_CHECKING:
    import torch

Pooling = Literal["mean", "token", "last"]
POOLINGS: tuple[str, ...] = ("mean", "token", "last")
ITEM_TOKEN = "[ITEM]"
#: Appended after the item text for token pooling; the embedding is read at ``[ITEM]``.
TOKEN_PROMPT = f'\nThe item above in one word: "{ITEM_TOKEN}"'
_WEIGHTS = (".safetensors", ".bin")


def resolve_embedding_model(model: str | Path | None) -> tuple[Path, str]:
    """(HF folder, display name) for ``None``/``"minilm"``, ``"smollm2"`` or a local folder."""
    if model is None or str(model).lower() in {"minilm", "all-minilm-l6-v2"}:
        from kar.encoding import default_model_dir

        return default_model_dir(), "all-MiniLM-L6-v2"
    from kar.generation.model_files import BUNDLED_NAME, is_bundled, resolve_model

    if is_bundled(model):
        return resolve_model(None), BUNDLED_NAME
    path = Path(model).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise KarError(
            f"embedding model {str(model)!r} is neither 'minilm', 'smollm2' nor a local Hugging "
            "Face folder with config.json (kar does not download models)"
        )
    return path.resolve(), path.resolve().name


def is_causal_lm(folder: Path) -> bool:
    """Whether the folder's config names a causal LM (decoder): token pooling by default."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KarError(f"{folder / 'config.json'}: cannot read: {exc}") from exc
    return any("CausalLM" in a for a in config.get("architectures") or [])


def fingerprint(folder: Path) -> str:
    """Short hash of a model folder's config and weight files (names, sizes)."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for file in sorted(p for p in folder.iterdir() if p.suffix in _WEIGHTS):
        digest.update(f"{file.name}:{file.stat().st_size};".encode())
    return digest.hexdigest()[:8]


def token_positions(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Per row, the index of the last occurrence of ``token_id``; a KarError if a row has none."""
    match = input_ids == token_id
    found = match.any(dim=1)
    if not bool(found.all()):
        row = int((~found).nonzero()[0, 0])
        raise KarError(f"row {row} of the batch has no {ITEM_TOKEN} token (truncated?)")
    width = match.shape[1]
    return width - 1 - match.int().flip(dims=[1]).argmax(dim=1)


def token_pool(hidden: torch.Tensor, input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """hidden (batch, seq, dim) -> (batch, dim): the state at each row's special token."""
    import torch

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, token_positions(input_ids, token_id)]


class ItemEmbedder:
    """One float32 vector per item text from a local HF model (see the module docstring)."""

    def __init__(
        self,
        model: str | Path | None = None,
        pooling: Pooling | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        normalize: bool = True,
        threads: int = 1,
    ) -> None:
        if pooling is not None and pooling not in POOLINGS:
            raise KarError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        if max_length < 8 or batch_size < 1:
            raise KarError(
                f"max_length must be >= 8 and batch_size >= 1 ({max_length}, {batch_size})"
            )
        self.model_dir, self.name = resolve_embedding_model(model)
        self.pooling: Pooling = pooling or ("token" if is_causal_lm(self.model_dir) else "mean")
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.threads = threads
        norm = "/norm" if normalize else ""
        #: What produces the vectors: model, its files, pooling, length, normalisation.
        self.model_id = (
            f"{self.name}@{fingerprint(self.model_dir)}/{self.pooling}/{max_length}{norm}"
        )
        self.model: Any = None
        self.tokenizer: Any = None
        self.token_id: int | None = None

    def load(self) -> ItemEmbedder:
        """Load tokenizer and model (once); for token pooling, add ``[ITEM]`` if it is new."""
        if self.model is not None:
            return self
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(self.threads)
        try:
            tok = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(
                self.model_dir, dtype=torch.float32, local_files_only=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise KarError(f"cannot load embedding model from {self.model_dir}: {exc}") from exc
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        tok.padding_side = "right"
        if self.pooling == "token":
            if ITEM_TOKEN not in tok.get_vocab():
                tok.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN]})
                old = model.get_input_embeddings().weight.shape[0]
                model.resize_token_embeddings(len(tok), mean_resizing=False)
                with torch.no_grad():
                    weight = model.get_input_embeddings().weight
                    weight[old:] = weight[:old].mean(dim=0)
            self.token_id = int(tok.convert_tokens_to_ids(ITEM_TOKEN))
        model.eval()
        self.tokenizer, self.model = tok, model
        return self

    @property
    def dim(self) -> int:
        """Vector size (the model's hidden size)."""
        config = json.loads((self.model_dir / "config.json").read_text())
        return int(config.get("hidden_size") or config.get("d_model") or config.get("n_embd"))

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text; with token pooling the prompt and ``[ITEM]`` are never cut."""
        self.load()
        tok = self.tokenizer
        if self.pooling != "token":
            return tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        suffix = tok(TOKEN_PROMPT, add_special_tokens=False)["input_ids"]
        room = self.max_length - len(suffix)
        heads = tok(list(texts), truncation=True, max_length=room)["input_ids"]
        return [head + suffix for head in heads]

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token id lists into input_ids / attention_mask tensors."""
        import torch

        width = max(len(row) for row in ids)
        pad_id = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled (batch, dim) vectors, with gradients when enabled (tuning)."""
        import torch

        from kar.encoding.pooling import pool

        hidden = self.model(**batch).last_hidden_state
        if self.pooling == "token":
            assert self.token_id is not None
            vectors = token_pool(hidden, batch["input_ids"], self.token_id)
        else:
            vectors = pool(hidden, batch["attention_mask"], self.pooling)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """float32 (len(texts), dim), row i for texts[i]; batches sorted by token length."""
        import torch

        if isinstance(texts, str):
            raise KarError("embed() takes a sequence of texts, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataValidationError(
                    "item text is empty or not a string", row=i + 1, field="text"
                )
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenize(texts)
        order = np.argsort([-len(row) for row in ids], kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if progress:
            from rich.progress import track

            batches = track(batches, description=f"embedding items with {self.name}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx in batches:
                out[idx] = self.forward(self.pad([ids[i] for i in idx])).float().numpy()
        return out

    def save(self, directory: Path) -> Path:
        """Write the (tuned) model and tokenizer as an HF folder that loads by path."""
        self.load()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    def __repr__(self) -> str:
        return f"ItemEmbedder({self.model_id!r})"
