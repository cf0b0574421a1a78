"""Cluster users and items on collaborative signal: truncated SVD of the user-item
interaction matrix (scikit-learn), then k-means on the normalised factors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from kar.errors import DataValidationError
from kar.records import stable_hash

MEMBERSHIP_SCHEMA = {"entity_type": pl.Utf8, "entity_id": pl.Utf8, "cluster": pl.Int64}


@dataclass
class Clusters:
    """Cluster membership of users and items, and the identity of the clustering."""

    membership: pl.DataFrame  # entity_type, entity_id, cluster
    clustering: str  # hash of the settings and the matrix: names the clusters' knowledge
    explained_variance: float

    def n_clusters(self, entity_type: str) -> int:
        return self.membership.filter(pl.col("entity_type") == entity_type)["cluster"].n_unique()

    def members(self, entity_type: str) -> dict[int, list[str]]:
        part = self.membership.filter(pl.col("entity_type") == entity_type)
        grouped = part.group_by("cluster").agg(pl.col("entity_id").sort())
        return {int(k): list(v) for k, v in grouped.iter_rows()}


def _check_arguments(interactions: pl.DataFrame, counts: dict[str, int]) -> None:
    """``interactions`` has user_id and item_id; every count in ``counts`` is >= 1."""
    for column in ("user_id", "item_id"):
        if column not in interactions.columns:
            raise DataValidationError(
                f"missing column {column!r}", file="interactions table", field=column
            )
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass
class _InteractionMatrix:
    """The binary user x item matrix, with its sorted row (user) and column (item) ids."""

    users: list[str]
    items: list[str]
    rows: np.ndarray  # row of each distinct (user, item) pair
    cols: np.ndarray
    matrix: Any  # scipy.sparse.csr_matrix


def _interaction_matrix(interactions: pl.DataFrame) -> _InteractionMatrix:
    from scipy.sparse import csr_matrix

    pairs = interactions.select(
        pl.col("user_id").cast(pl.Utf8), pl.col("item_id").cast(pl.Utf8)
    ).unique()
    if pairs.height == 0:
        raise DataValidationError("no interactions to cluster", file="interactions table")
    users = sorted(set(pairs["user_id"].to_list()))
    items = sorted(set(pairs["item_id"].to_list()))
    u_index = {u: i for i, u in enumerate(users)}
    i_index = {it: i for i, it in enumerate(items)}
    rows = np.fromiter((u_index[u] for u in pairs["user_id"]), np.int64, pairs.height)
    cols = np.fromiter((i_index[i] for i in pairs["item_id"]), np.int64, pairs.height)
    matrix = csr_matrix((np.ones(pairs.height), (rows, cols)), shape=(len(users), len(items)))
    return _InteractionMatrix(users=users, items=items, rows=rows, cols=cols, matrix=matrix)


def _factorise(
    matrix: Any, n_components: int, seed: int
) -> tuple[int, np.ndarray, np.ndarray, float]:
    """(components, user factors U·S, item factors V·S, explained variance ratio)."""
    from sklearn.decomposition import TruncatedSVD

    k = max(1, min(n_components, min(matrix.shape) - 1))
    if min(matrix.shape) <= 1:  # one user or one item: nothing to factorise
        return k, matrix.toarray(), matrix.toarray().T, 1.0
    svd = TruncatedSVD(n_components=k, random_state=seed)
    user_f = svd.fit_transform(matrix)
    item_f = svd.components_.T * svd.singular_values_
    return k, user_f, item_f, float(svd.explained_variance_ratio_.sum())


def _assign(ids: list[str], factors: np.ndarray, n: int, kind: str, seed: int) -> pl.DataFrame:
    """Membership rows of ``ids``: k-means on the L2-normalised ``factors`` (n capped)."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    n = min(n, len(ids))
    if n == 1:
        labels = np.zeros(len(ids), dtype=np.int64)
    else:
        km = KMeans(n_clusters=n, n_init=3, random_state=seed)
        labels = km.fit_predict(normalize(factors))
    # renumber clusters by first member, so ids do not depend on k-means' label order
    order: dict[int, int] = {}
    for label in labels:
        order.setdefault(int(label), len(order))
    return pl.DataFrame(
        {
            "entity_type": [kind] * len(ids),
            "entity_id": ids,
            "cluster": [order[int(x)] for x in labels],
        },
        schema=MEMBERSHIP_SCHEMA,
    )


def cluster_entities(
    interactions: pl.DataFrame,
    *,
    n_components: int = 32,
    user_clusters: int = 50,
    item_clusters: int = 50,
    seed: int = 0,
) -> Clusters:
    """Cluster the users and items of ``interactions`` (user_id, item_id).

    The binary user x item matrix is factorised with ``TruncatedSVD(n_components)``; user
    factors (U·S) and item factors (V·S) are L2-normalised and clustered with k-means
    (cluster counts capped at the number of entities). Only entities with interactions
    are clustered; the others (cold-start items, new users) belong to no cluster.
    """
    counts = {
        "n_components": n_components,
        "user_clusters": user_clusters,
        "item_clusters": item_clusters,
    }
    _check_arguments(interactions, counts)
    m = _interaction_matrix(interactions)
    k, user_f, item_f, explained = _factorise(m.matrix, n_components, seed)
    membership = pl.concat(
        [
            _assign(m.users, user_f, user_clusters, "user", seed),
            _assign(m.items, item_f, item_clusters, "item", seed),
        ]
    )
    clustering = stable_hash(
        {
            "k": k,
            "users": user_clusters,
            "items": item_clusters,
            "seed": seed,
            "ids": stable_hash([m.users, m.items]),
            "pairs": stable_hash(sorted(zip(m.rows.tolist(), m.cols.tolist(), strict=True))),
        },
        length=8,
    )
    return Clusters(membership=membership, clustering=clustering, explained_variance=explained)
