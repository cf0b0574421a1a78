"""Backbone registry: :data:`MODELS` is :data:`kar.plugins.BACKBONES` (name -> dotted path of a
:class:`~kar.models.base.CTRModel` subclass); a backbone of your own is named by its dotted
path. A new built-in backbone is one file and one line there."""

from __future__ import annotations

from dataclasses import dataclass

from kar.models.base import CTRModel
from kar.models.config import ModelConfig
from kar.plugins import BACKBONES

MODELS = BACKBONES


@dataclass(frozen=True)
class ModelEntry:
    model: type[CTRModel]
    config: type[ModelConfig]


def available_models() -> list[str]:
    """The registered names ``train_ctr(backbone=...)`` accepts (besides dotted paths)."""
    return sorted(MODELS)


def get_model(name: str) -> ModelEntry:
    """The backbone ``name`` (a registered name, any case, or a dotted path), imported now;
    :class:`~kar.errors.ConfigError` naming the choices when it is neither."""
    try:
        MODELS.check(name)
    except ValueError as exc:
        from kar.errors import ConfigError

        raise ConfigError(str(exc)) from None
    model = MODELS.load(name)
    return ModelEntry(model, model.config_class)


def model_table() -> list[tuple[str, str, str]]:
    """(name, class, first docstring line of its config) per backbone, for ``kar models list``."""
    rows = []
    for name in available_models():
        entry = get_model(name)
        doc = (entry.config.__doc__ or entry.model.__doc__ or "").strip().splitlines()
        rows.append((name, entry.model.__name__, doc[0] if doc else ""))
    return rows
