"""Settings of the embedding stage: the ``embedding:`` section of ``kar.yaml``.

:class:`EmbeddingSettings` is that section (``kar.project.ProjectSettings.embedding``). A
project made before the section existed keeps its settings in ``embedding.yaml``: it is
still read (once, when the project loads, with a :class:`LegacySettingsWarning` saying to
move it), unless kar.yaml's own section says otherwise (then an error naming both files).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kar.errors import ConfigError

LEGACY_FILE = "embedding.yaml"  # deprecated: the embedding: section of kar.yaml


class LegacySettingsWarning(UserWarning):
    """A deprecated settings file was read (shown by default, also by the ``kar`` command)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CooccurrenceSettings(_Section):
    """Co-occurring item pairs of the training-time interactions (contrastive tuning)."""

    window: int = Field(10, ge=1)  # positions apart in a user's sequence that still co-occur
    top_k: int = Field(10, ge=1)  # partners kept per item


class TuneSettings(_Section):
    """NoteLLM-style contrastive tuning of the item embedder (`kar embed tune`)."""

    # mlp: a residual head on frozen vectors; projection: a linear head; encoder: the model
    method: Literal["encoder", "projection", "mlp"] = "mlp"
    epochs: int = Field(8, ge=1)  # epochs over the pairs (the best on valid Recall@10 is kept)
    batch_size: int = Field(64, ge=2)  # pairs per step (in-batch negatives)
    lr: float | None = None  # None: 3e-5 (encoder), 1e-3 (projection, mlp)
    temperature: float = Field(0.05, gt=0)  # of the InfoNCE loss
    train_layers: int | None = Field(None, ge=1)  # encoder: tune the top N layers (None: all)
    checkpoint_every: int = Field(50, ge=1)  # steps between checkpoints (resumable)
    seed: int = 0  # shuffling and head initialisation


class TowerSettings(_Section):
    """HLLM-style user tower over item embeddings (`kar embed users`)."""

    max_len: int = Field(20, ge=1)  # last item vectors a user is read from
    d_model: int = Field(128, ge=8)  # width of the transformer
    layers: int = Field(2, ge=1)  # transformer layers
    heads: int = Field(4, ge=1)  # attention heads
    epochs: int = Field(8, ge=1)  # training epochs (the best on valid Recall@10 is kept)
    batch_size: int = Field(256, ge=2)  # sequences per step
    lr: float = Field(1e-3, gt=0)  # learning rate
    temperature: float = Field(0.05, gt=0)  # of the InfoNCE loss
    seed: int = 0  # initialisation and shuffling


class SAIDSettings(_Section):
    """SAID: a projection from each item's ID to soft tokens of a frozen LLM, trained so the
    LLM regenerates the item's text (`kar embed said`, kar.embedding.said)."""

    model: str | None = None  # the frozen LLM: None / smollm2 (bundled SmolLM2-135M) | HF folder
    soft_tokens: int = Field(4, ge=1)  # k soft tokens per item
    id_dim: int = Field(64, ge=1)  # width of the ID embedding table
    hidden: int = Field(256, ge=1)  # width of the MLP from ID embedding to k x LLM hidden size
    lr: float = Field(3e-3, gt=0)  # AdamW learning rate (constant)
    epochs: int = Field(5, ge=1)  # passes over the items (raising it continues a finished run)
    batch_size: int = Field(8, ge=1)  # items per step
    max_text_tokens: int = Field(32, ge=2)  # text tokens per item (end-of-text included)
    output: Literal["mean", "flat"] = "mean"  # item vector: mean of the soft tokens, or all
    checkpoint_every: int = Field(20, ge=1)  # steps between checkpoints (resumable)
    threads: int = Field(1, ge=1)  # torch CPU threads
    seed: int = 0  # initialisation and batch order


class FeastSettings(_Section):
    """The Feast repository of the vector-indexed views (i2i / u2i search)."""

    repo: str = "embedding_repo"  # folder of the embedding Feast repository, in the project
    project: str | None = None  # Feast project (None: <features.project>_emb)
    online_store: dict[str, Any] | None = None  # None: local PostgreSQL with pgvector


class EmbeddingSettings(_Section):
    """Item and user embeddings for retrieval and cold start, served by Feast vector search
    (`kar embed`, docs/embedding.md)."""

    model: str | None = None  # None / minilm: bundled all-MiniLM-L6-v2 | smollm2 | an HF folder
    # how token states become one vector; None: token for a causal LM, else mean
    pooling: Literal["mean", "cls", "last", "token"] | None = None
    max_length: int = Field(128, ge=8)  # tokens per item text (the [ITEM] prompt is never cut)
    batch_size: int = Field(32, ge=1)  # texts per model call
    facts: bool = True  # append the knowledge store's item facts to the item text
    cooccurrence: CooccurrenceSettings = Field(default_factory=CooccurrenceSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    tower: TowerSettings = Field(default_factory=TowerSettings)
    said: SAIDSettings = Field(default_factory=SAIDSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)

    @classmethod
    def load_file(cls, path: Path) -> EmbeddingSettings:
        """A YAML file of these settings, validated (errors name the file and field)."""
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: field {field!r}: {first['msg']}") from exc


def merge_legacy_file(root: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """kar.yaml's ``raw`` settings, with a deprecated ``root/embedding.yaml`` read into its
    ``embedding`` section (and a :class:`LegacySettingsWarning`); unchanged without one.

    A ConfigError when kar.yaml's section sets something else than the defaults or the file.
    """
    path = Path(root) / LEGACY_FILE
    if not path.is_file():
        return raw
    legacy = EmbeddingSettings.load_file(path).model_dump(mode="json")
    section = raw.get("embedding")
    if section not in (None, {}, legacy, EmbeddingSettings().model_dump(mode="json")):
        raise ConfigError(
            f"{path} and the embedding: section of {Path(root) / 'kar.yaml'} both set the "
            f"embedding settings: keep kar.yaml's section and delete {path.name}"
        )
    warnings.warn(
        f"{path} is deprecated: move its settings under `embedding:` in kar.yaml and delete "
        "it (read this time)",
        LegacySettingsWarning,
        stacklevel=3,
    )
    return {**raw, "embedding": legacy}
