"""Discrete knowledge codes: k-means over adapted vectors -> one categorical id per entity.

Huawei's follow-up to KAR reports that a codebook index of the knowledge vector, used as
an extra categorical feature, adds AUC over the raw vectors. Code 0 is reserved for
"no knowledge"; clusters are numbered 1..k.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl

from kar.errors import ConfigError, DataValidationError

CODE_SCHEMA = {"entity_id": pl.Utf8, "code": pl.Int64}


def _matrix(vectors: pl.DataFrame, what: str) -> np.ndarray:
    for col in ("entity_id", "vector"):
        if col not in vectors.columns:
            raise DataValidationError(f"{what} vectors frame has no column", field=col)
    vec = vectors["vector"]
    if isinstance(vec.dtype, pl.Array):
        vec = vec.arr.to_list()
    lengths = vec.list.len()
    if vectors.height and lengths.n_unique() != 1:
        row = int((lengths != lengths[0]).arg_true()[0])
        raise DataValidationError(
            f"{what} vectors have unequal lengths", row=row + 1, field="vector"
        )
    dim = int(lengths[0]) if vectors.height else 0
    return np.asarray(vec.list.to_array(dim).to_numpy(), dtype=np.float32)


@dataclass
class KnowledgeCodebook:
    """A fitted k-means codebook (``centroids``: (k, d)); ``assign`` maps vectors to 1..k."""

    centroids: np.ndarray

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def fit(
        cls, vectors: pl.DataFrame, size: int = 64, seed: int = 0, what: str = "knowledge"
    ) -> KnowledgeCodebook:
        """k-means (scikit-learn, k-means++) with ``size`` clusters over an (entity_id, vector)
        frame; ``size`` is capped at the number of distinct vectors."""
        from sklearn.cluster import KMeans

        if size < 1:
            raise ConfigError(f"codebook size must be >= 1, not {size}")
        x = _matrix(vectors, what)
        if len(x) == 0:
            raise DataValidationError(f"no {what} vectors to cluster", field="vector")
        k = min(size, len(np.unique(x, axis=0)))
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
        return cls(km.cluster_centers_.astype(np.float32))

    def assign(self, vectors: pl.DataFrame, what: str = "knowledge") -> pl.DataFrame:
        """(entity_id, code) with code in 1..size (nearest centroid)."""
        x = _matrix(vectors, what)
        if x.size and x.shape[1] != self.centroids.shape[1]:
            raise DataValidationError(
                f"{what} vectors have {x.shape[1]} values, the codebook {self.centroids.shape[1]}",
                field="vector",
            )
        d2 = (x**2).sum(1, keepdims=True) - 2 * x @ self.centroids.T
        d2 += (self.centroids**2).sum(1)[None, :]
        codes = d2.argmin(1) + 1 if len(x) else np.zeros(0, dtype=np.int64)
        return pl.DataFrame(
            {"entity_id": vectors["entity_id"].cast(pl.Utf8), "code": codes.astype(np.int64)},
            schema=CODE_SCHEMA,
        )


def knowledge_codes(
    users: pl.DataFrame, items: pl.DataFrame, size: int = 64, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One codebook per kind, fitted and assigned: (user codes, item codes)."""
    u = KnowledgeCodebook.fit(users, size, seed, "user").assign(users, "user")
    i = KnowledgeCodebook.fit(items, size, seed, "item").assign(items, "item")
    return u, i


def with_codes(features, user_codes: pl.DataFrame, item_codes: pl.DataFrame, size: int):
    """A copy of ``CTRFeatures`` with the codes as one more user and one more item attribute.

    Every backbone embeds attributes through the shared input layer, so the codes become an
    embedded categorical field with no model change. Entities without a code get 0.
    """
    arrays = {}
    for split, arr in features.arrays.items():
        samples = features.samples[split]
        cols = {}
        for key, codes in (("user", user_codes), ("item", item_codes)):
            joined = samples.select(pl.col(f"{key}_id").cast(pl.Utf8).alias("entity_id")).join(
                codes, on="entity_id", how="left", maintain_order="left"
            )
            cols[key] = joined["code"].fill_null(0).to_numpy().astype(np.int64)[:, None]
        arrays[split] = {
            **arr,
            "user_attrs": np.ascontiguousarray(np.hstack([arr["user_attrs"], cols["user"]])),
            "item_attrs": np.ascontiguousarray(np.hstack([arr["item_attrs"], cols["item"]])),
        }
    return dataclasses.replace(
        features,
        arrays=arrays,
        user_attr_names=[*features.user_attr_names, "knowledge_code"],
        user_attr_sizes=[*features.user_attr_sizes, size + 1],
        item_attr_names=[*features.item_attr_names, "knowledge_code"],
        item_attr_sizes=[*features.item_attr_sizes, size + 1],
    )
