"""Backbone registry: name -> model class + config class. Add a backbone by adding a line."""

from __future__ import annotations

from dataclasses import dataclass

from kar.errors import ConfigError
from kar.models.autoint import AutoInt
from kar.models.base import CTRModel
from kar.models.config import ModelConfig
from kar.models.dcnv2 import DCNv2
from kar.models.deepfm import DeepFM
from kar.models.dien import DIEN
from kar.models.din import DIN
from kar.models.fibinet import FiBiNet
from kar.models.xdeepfm import XDeepFM


@dataclass(frozen=True)
class ModelEntry:
    model: type[CTRModel]
    config: type[ModelConfig]


MODELS: dict[str, ModelEntry] = {
    "deepfm": ModelEntry(DeepFM, DeepFM.config_class),
    "din": ModelEntry(DIN, DIN.config_class),
    "dcnv2": ModelEntry(DCNv2, DCNv2.config_class),
    "autoint": ModelEntry(AutoInt, AutoInt.config_class),
    "xdeepfm": ModelEntry(XDeepFM, XDeepFM.config_class),
    "fibinet": ModelEntry(FiBiNet, FiBiNet.config_class),
    "dien": ModelEntry(DIEN, DIEN.config_class),
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


def model_table() -> list[tuple[str, str, str]]:
    """(name, class, first docstring line of its config) per backbone, for ``kar models list``."""
    rows = []
    for name in available_models():
        entry = MODELS[name]
        doc = (entry.config.__doc__ or entry.model.__doc__ or "").strip().splitlines()
        rows.append((name, entry.model.__name__, doc[0] if doc else ""))
    return rows
