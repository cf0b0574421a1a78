"""The knowledge-match score: an on-demand feature view over the user and item knowledge.

kar's adaptor is trained inside kar's DeepFM, where the user and item knowledge vectors are
FM fields: their inner product ``<user_vec, item_vec>`` is a learned "knowledge match"
score. A consumer whose dense inputs only reach an MLP (DeepCTR-Torch DeepFM, torch-rechub
Wide&Deep, kar's DIN read from scratch) has to learn that user x item interaction itself;
this module publishes it as a Feast on-demand feature view instead, computed when read
(``get_historical_features`` point in time, ``get_online_features``) from the two vectors
Feast returns for the (user, item) pair:

- ``knowledge_affinity:user_item_knowledge_dot``: the inner product (0 when either vector
  is missing);
- ``knowledge_affinity:user_item_knowledge_cosine``: the cosine (0 when either vector is
  missing or has zero norm).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

AFFINITY_VIEW = "knowledge_affinity"
DOT_FEATURE = "user_item_knowledge_dot"
COSINE_FEATURE = "user_item_knowledge_cosine"
DOT_REF = f"{AFFINITY_VIEW}:{DOT_FEATURE}"


def affinity_of_rows(
    user_table: np.ndarray, item_table: np.ndarray, user_rows: np.ndarray, item_rows: np.ndarray
) -> np.ndarray:
    """The dot-product feature computed in numpy from vector tables and, per sample, the
    rows read (-1: no vector, then 0), as the on-demand view computes it (float64)."""
    users = np.asarray(user_table, dtype=np.float64)
    items = np.asarray(item_table, dtype=np.float64)
    ok = (np.asarray(user_rows) >= 0) & (np.asarray(item_rows) >= 0)
    u = users[np.clip(user_rows, 0, None)] if len(users) else np.zeros((len(ok), 0))
    v = items[np.clip(item_rows, 0, None)] if len(items) else np.zeros((len(ok), 0))
    if u.shape[1] != v.shape[1]:
        return np.zeros(len(ok))
    return np.where(ok, np.einsum("ij,ij->i", u, v), 0.0)


def knowledge_affinity_udf(inputs):
    """The on-demand transformation (pandas mode): dot product and cosine per row, 0 where
    either vector is missing. Self-contained (its imports inside): Feast stores the
    function's source and runs it from that text."""
    import numpy as np
    import pandas as pd

    def rows(column):
        values = list(column)
        dims = [len(v) for v in values if v is not None and not isinstance(v, float)]
        dim = max(dims) if dims else 0
        out = np.zeros((len(values), dim), dtype=np.float64)
        present = np.zeros(len(values), dtype=bool)
        for i, value in enumerate(values):
            if value is None or isinstance(value, float):  # None / NaN: no vector
                continue
            row = np.asarray(value, dtype=np.float64).ravel()
            if row.shape == (dim,) and np.isfinite(row).all():
                out[i], present[i] = row, True
        return out, present

    u, u_ok = rows(inputs["user_knowledge_vector"])
    v, v_ok = rows(inputs["item_knowledge_vector"])
    if u.shape[1] != v.shape[1]:  # different dimensions: no score
        u_ok = v_ok = np.zeros(len(u), dtype=bool)
        u = v = np.zeros((len(u), 0))
    ok = u_ok & v_ok
    dot = np.where(ok, np.einsum("ij,ij->i", u, v), 0.0)
    norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    cosine = np.where(ok & (norms > 0), dot / np.where(norms > 0, norms, 1.0), 0.0)
    return pd.DataFrame(
        {"user_item_knowledge_dot": dot, "user_item_knowledge_cosine": cosine},
        index=inputs.index,
    )


def affinity_objects(
    objects: Sequence[Any],
    *,
    user_view: str,
    item_view: str,
    service: str,
    unpublished: Sequence[str] = (),
) -> list[Any]:
    """``objects`` (a kar knowledge repo's loaded definitions) plus the ``knowledge_affinity``
    on-demand view over ``user_knowledge`` and ``item_knowledge``, and the
    ``kar_ctr_knowledge`` feature service with it added (so a consumer reading the service
    gets the score with no extra work). Unchanged, with a one-line warning, when one kind
    has no published vectors yet (``unpublished``: those views) or the two views' vectors
    differ in dimension. (kar.features.repo.load_definitions calls it with the built-in
    names.)"""
    from feast import FeatureService, FeatureView, Field
    from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
    from feast.types import Float64

    views = {o.name: o for o in objects if isinstance(o, FeatureView)}
    if any(isinstance(o, OnDemandFeatureView) and o.name == AFFINITY_VIEW for o in objects):
        return list(objects)  # the definitions file declares it itself
    if user_view not in views or item_view not in views:
        return list(objects)
    user, item = views[user_view], views[item_view]
    missing = [v for v in (user_view, item_view) if v in unpublished]
    if missing:
        log.warning("%s not registered: %s has no published vectors yet", AFFINITY_VIEW, missing[0])
        return list(objects)
    dims = {v.name: v.tags.get("kar.vector_dim") for v in (user, item)}
    if dims[user_view] != dims[item_view]:
        log.warning(
            "%s not registered: user and item vectors differ in dimension (%s vs %s)",
            AFFINITY_VIEW, dims[user_view], dims[item_view],
        )  # fmt: skip
        return list(objects)
    tags = {k: v for k, v in user.tags.items() if k != "kar.kind"}
    tags["kar.kind"] = "knowledge_affinity"
    odfv = on_demand_feature_view(
        name=AFFINITY_VIEW,
        sources=[user, item],
        schema=[Field(name=DOT_FEATURE, dtype=Float64), Field(name=COSINE_FEATURE, dtype=Float64)],
        mode="pandas",
        tags=tags,
        description=(
            "Knowledge match of a (user, item) pair: the inner product (and cosine) of the "
            "published user and item knowledge vectors, 0 where either is missing"
        ),
    )(_fresh(knowledge_affinity_udf))
    out: list[Any] = []
    for obj in objects:
        if isinstance(obj, FeatureService) and obj.name == service:
            names = [p.name for p in obj.feature_view_projections]
            features = [views[n] for n in names if n in views]
            obj = FeatureService(
                name=obj.name,
                features=[*features, odfv],
                tags=dict(obj.tags),
                description=obj.description,
                owner=obj.owner,
            )
        out.append(obj)
    return [*out, odfv]


def _fresh(function: Any) -> Any:
    """A copy of ``function``: Feast's decorator rewrites the ``__module__`` of the function
    it is given (to serialise it by value), which breaks reading its source a second time."""
    import functools
    import types

    copy = types.FunctionType(
        function.__code__, function.__globals__, function.__name__, function.__defaults__,
        function.__closure__,
    )  # fmt: skip
    return functools.update_wrapper(copy, function, updated=())
