"""Adaptor configuration, loaded from YAML files in ``experts/``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kar.errors import ConfigError
from kar.resources import bundled_dir


class AdaptorConfig(BaseModel):
    """How raw knowledge encodings are compressed into small vectors.

    ``hea``: per kind a softmax gate over ``n_shared`` shared + ``n_specific`` kind experts;
    ``moe``: ``n_shared`` experts shared by both kinds, one gate per kind (``n_specific`` = 0);
    ``mlp``: one MLP per kind, no gate;
    ``raw``: no adaptor -- the raw encodings go to the backbone as they are (an ablation).
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["hea", "moe", "mlp", "raw"] = "hea"
    n_shared: int = Field(2, ge=0)
    n_specific: int = Field(2, ge=0)
    expert_hidden: list[int] = Field(default_factory=lambda: [128])
    out_dim: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    input_dim: int | None = Field(None, ge=1)  # inferred from the encodings when None
    # z-score each kind's raw encodings per dimension (statistics fitted on the training
    # entities, saved with the weights) before the experts. Off by default, by measurement:
    # on the oracle demo it lifts DeepFM +8.1% (+1.1% without); on ML-100K with SmolLM2's
    # answers it closes the gate in every seed (DeepFM +0.53% without), docs/benchmarks.md
    standardize: bool = False

    @model_validator(mode="after")
    def _check_experts(self) -> AdaptorConfig:
        if self.type == "moe" and self.n_specific:
            raise ValueError("moe has only shared experts: set n_specific to 0")
        if self.type in ("hea", "moe") and self.n_shared + self.n_specific < 1:
            raise ValueError(f"{self.type} needs at least one expert")
        return self

    @classmethod
    def load(cls, path_or_name: str | Path) -> AdaptorConfig:
        """Load a YAML file, or a bundled config by name (``hea``, ``moe``, ``mlp``)."""
        path = Path(path_or_name)
        if not path.suffix and not path.exists():
            path = bundled_dir("experts") / f"{path_or_name}.yaml"
        if not path.is_file():
            raise ConfigError(f"adaptor config {path} not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return cls.model_validate(data)
        except (yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(f"invalid adaptor config {path}: {exc}") from exc
