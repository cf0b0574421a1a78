"""Settings of the embedding stage: ``embedding.yaml`` in the project folder (optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kar.errors import ConfigError

SETTINGS_FILE = "embedding.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CooccurrenceSettings(_Section):
    window: int = Field(10, ge=1)  # positions apart in a user's sequence that still co-occur
    top_k: int = Field(10, ge=1)  # partners kept per item


class TuneSettings(_Section):
    method: Literal["encoder", "projection", "mlp"] = "mlp"
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float | None = None
    temperature: float = Field(0.05, gt=0)
    train_layers: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0


class TowerSettings(_Section):
    max_len: int = Field(20, ge=1)
    d_model: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    temperature: float = Field(0.05, gt=0)
    seed: int = 0


class FeastSettings(_Section):
    repo: str = "embedding_repo"  # folder of the embedding Feast repository, in the project
    project: str | None = None  # Feast project (None: <features.project>_emb)
    online_store: dict[str, Any] | None = None  # None: local PostgreSQL with pgvector


class EmbeddingSettings(_Section):
    model: str | None = None  # None / minilm | smollm2 | a local HF folder
    pooling: Literal["mean", "token", "last"] | None = None  # None: token for LLMs, else mean
    max_length: int = Field(128, ge=8)
    batch_size: int = Field(32, ge=1)
    facts: bool = True  # append the knowledge store's item facts to the item text
    cooccurrence: CooccurrenceSettings = Field(default_factory=CooccurrenceSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    tower: TowerSettings = Field(default_factory=TowerSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)

    @classmethod
    def load(cls, root: Path) -> EmbeddingSettings:
        """``root/embedding.yaml`` validated (defaults when the file is absent)."""
        path = Path(root) / SETTINGS_FILE
        if not path.is_file():
            return cls()
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: field {field!r}: {first['msg']}") from exc
