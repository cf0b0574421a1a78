"""CTR metrics (scikit-learn): AUC and LogLoss."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, probs))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary cross-entropy of probabilities (clipped away from 0 and 1)."""
    return float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1]))
