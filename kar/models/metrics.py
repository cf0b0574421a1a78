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


def auc_win_probability(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    resamples: int = 200,
    seed: int = 0,
) -> float:
    """Paired bootstrap: the fraction of resamples of the rows in which ``probs_a`` has the
    higher AUC than ``probs_b`` (ties count half)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    wins = 0.0
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        a, b = auc(labels[rows], probs_a[rows]), auc(labels[rows], probs_b[rows])
        if math.isnan(a) or math.isnan(b):
            continue
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / resamples
