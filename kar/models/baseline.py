"""The trivial baseline every table carries: logistic regression on positive rates so far.

For each sample, the item's and the user's smoothed positive rate over all interactions
strictly before its timestamp (same-second rows excluded), shrunk towards the train-time
global rate with ``prior_strength`` pseudo-observations. Nothing from the future is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from kar.models.counters import logit, rates_before
from kar.models.inputs import SPLITS, CTRFeatures
from kar.models.metrics import auc, logloss


@dataclass
class BaselineResult:
    valid_auc: float
    valid_logloss: float
    test_auc: float
    test_logloss: float
    seconds: float
    model: LogisticRegression
    test_probs: np.ndarray  # click probability per test row (for slices of the test split)


def rate_features(
    features: CTRFeatures, split: str, prior: float, strength: float = 10.0
) -> np.ndarray:
    """(n, 2) logits of the item's and the user's positive rate before each sample."""
    samples = features.samples[split]
    item = rates_before(features.events, samples, "item_id", prior, strength)
    user = rates_before(features.events, samples, "user_id", prior, strength)
    return np.column_stack([logit(item), logit(user)])


def fit_rate_baseline(features: CTRFeatures, prior_strength: float = 10.0) -> BaselineResult:
    """Fit on train, select nothing, report valid and test AUC / LogLoss."""
    start = time.perf_counter()
    prior = float(features.samples["train"]["label"].cast(pl.Float64).mean() or 0.5)
    x = {s: rate_features(features, s, prior, prior_strength) for s in SPLITS}
    y = {s: features.samples[s]["label"].to_numpy() for s in SPLITS}
    model = LogisticRegression().fit(x["train"], y["train"])
    p = {s: model.predict_proba(x[s])[:, 1] for s in ("valid", "test")}
    return BaselineResult(
        valid_auc=auc(y["valid"], p["valid"]),
        valid_logloss=logloss(y["valid"], p["valid"]),
        test_auc=auc(y["test"], p["test"]),
        test_logloss=logloss(y["test"], p["test"]),
        seconds=time.perf_counter() - start,
        model=model,
        test_probs=p["test"],
    )
