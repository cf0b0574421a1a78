"""What the published adaptor's training said about knowledge: the gate's verdict and the
validation gain of knowledge over no knowledge, as lineage strings (Feast tags) and one line.

``kar train`` writes the numbers into the adaptor's ``metrics.json``
(:meth:`kar.models.train.TrainResult.metrics`); ``kar publish`` turns them into lineage
(:func:`gain_lineage`) that reaches the feature views as ``kar.*`` tags; ``kar train``,
``kar publish`` and ``kar features list`` print :func:`verdict_line`. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

UNKNOWN = "unknown"
# lineage keys, in the order they are printed
GAIN_KEYS = (
    "gate",
    "knowledge_gain",
    "valid_auc_knowledge",
    "valid_auc_none",
    "gate_probability",
    "gate_confidence",
    "trained_epoch",
)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def gain_lineage(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Lineage strings from an adaptor's metrics (``unknown`` for what they lack, e.g. an
    adaptor trained before kar recorded the gate)."""
    gate = metrics.get("gate_open")
    k_auc, n_auc = (
        _number(metrics.get("knowledge_valid_auc")),
        _number(metrics.get("none_valid_auc")),
    )
    prob, conf = _number(metrics.get("gate_probability")), _number(metrics.get("knowledge_gate"))
    epoch = metrics.get("best_trained_epoch")
    return {
        "gate": UNKNOWN if gate is None else "open" if gate else "closed",
        "knowledge_gain": UNKNOWN if k_auc is None or not n_auc else f"{k_auc / n_auc - 1:+.2%}",
        "valid_auc_knowledge": UNKNOWN if k_auc is None else f"{k_auc:.4f}",
        "valid_auc_none": UNKNOWN if n_auc is None else f"{n_auc:.4f}",
        "gate_probability": UNKNOWN if prob is None else f"{prob:.3f}",
        "gate_confidence": UNKNOWN if conf is None else f"{conf:g}",
        "trained_epoch": UNKNOWN if epoch is None else str(epoch),
    }


def knowledge_won(lineage: Mapping[str, str]) -> bool:
    """Knowledge beat no knowledge on validation: the gate opened and the trained knowledge
    model's validation AUC is the higher."""
    k_auc = _number(lineage.get("valid_auc_knowledge"))
    n_auc = _number(lineage.get("valid_auc_none"))
    return (
        lineage.get("gate") == "open"
        and k_auc is not None
        and n_auc is not None
        and (k_auc > n_auc)
    )


def verdict_line(lineage: Mapping[str, str]) -> str:
    """One line: whether knowledge beat no knowledge on validation, with the figures."""
    if lineage.get("gate", UNKNOWN) == UNKNOWN or lineage.get("valid_auc_none") in (None, UNKNOWN):
        return (
            "knowledge vs no knowledge on validation: unknown (the adaptor was trained before "
            "kar recorded it): run `kar train` again"
        )
    won = knowledge_won(lineage)
    prob, conf = lineage.get("gate_probability", UNKNOWN), lineage.get("gate_confidence", UNKNOWN)
    figures = (
        f"on validation: AUC {lineage['valid_auc_knowledge']} vs {lineage['valid_auc_none']} "
        f"({lineage.get('knowledge_gain', UNKNOWN)}, P(better) {prob} "
        f"{'>=' if lineage['gate'] == 'open' else '<'} {conf}, gate {lineage['gate']})"
    )
    epoch = lineage.get("trained_epoch", UNKNOWN)
    if won:
        return f"knowledge beat no knowledge {figures}; adaptor from trained epoch {epoch}"
    return (
        f"knowledge did NOT beat no knowledge {figures}; the vectors come from the trained "
        f"adaptor (epoch {epoch}) but carry no measured gain"
    )


def lineage_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The gain lineage of a feature view's ``kar.*`` tags (empty when it has none)."""
    return {k: tags[f"kar.{k}"] for k in GAIN_KEYS if f"kar.{k}" in tags}
