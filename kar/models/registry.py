"""Backbone registry: name -> model class + config class. Add a backbone by adding a line."""

from __future__ import annotations

from dataclasses import dataclass

from kar.errors import ConfigError
from kar.models.base import CTRModel
from kar.models.config import ModelConfig
from kar.models.deepfm import DeepFM
from kar.models.din import DIN


@dataclass(frozen=True)
class ModelEntry:
    model: type[CTRModel]
    config: type[ModelConfig]


MODELS: dict[str, ModelEntry] = {
    "deepfm": ModelEntry(DeepFM, DeepFM.config_class),
    "din": ModelEntry(DIN, DIN.config_class),
}


def available_models() -> list[str]:
    """Names accepted by ``train_ctr(backbone=...)``."""
    return sorted(MODELS)


def get_model(name: str) -> ModelEntry:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown backbone {name!r}; available: {', '.join(available_models())}"
        ) from None
