"""Backbone CTR models (DeepFM, DIN, ...), joint adaptor training and the evaluation harness.

Exports load lazily so that ``import kar.models`` does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CTRFeatures": "kar.models.inputs",
    "ModelConfig": "kar.models.config",
    "DeepFMConfig": "kar.models.config",
    "DINConfig": "kar.models.config",
    "DeepFM": "kar.models.deepfm",
    "DIN": "kar.models.din",
    "DCNv2": "kar.models.dcnv2",
    "AutoInt": "kar.models.autoint",
    "XDeepFM": "kar.models.xdeepfm",
    "FiBiNet": "kar.models.fibinet",
    "DIEN": "kar.models.dien",
    "model_table": "kar.models.registry",
    "ablate": "kar.models.ablations",
    "ABLATIONS": "kar.models.ablations",
    "MODELS": "kar.models.registry",
    "available_models": "kar.models.registry",
    "train_ctr": "kar.models.train",
    "TrainResult": "kar.models.train",
    "fit_rate_baseline": "kar.models.baseline",
    "compare": "kar.models.evaluation",
    "summarize": "kar.models.evaluation",
    "write_report": "kar.models.evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
