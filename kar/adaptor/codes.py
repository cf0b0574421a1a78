"""Discrete knowledge codes: k-means over adapted vectors -> one categorical id per entity.

Huawei's follow-up to KAR reports that a codebook index of the knowledge vector, used as
an extra categorical feature, adds AUC over the raw vectors. Code 0 is reserved for
"no knowledge"; clusters are numbered 1..k.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from kar.artifacts import check_manifest, manifest
from kar.errors import ConfigError, DataValidationError
from kar.project import CODEBOOK_FILE as CODEBOOK_FILE  # re-exported: the file's name

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
        if len(x) == 0:
            return pl.DataFrame(
                {"entity_id": vectors["entity_id"].cast(pl.Utf8), "code": []}, schema=CODE_SCHEMA
            )
        if x.shape[1] != self.centroids.shape[1]:
            raise DataValidationError(
                f"{what} vectors have {x.shape[1]} values, the codebook {self.centroids.shape[1]}",
                field="vector",
            )
        d2 = (x**2).sum(1, keepdims=True) - 2 * x @ self.centroids.T
        d2 += (self.centroids**2).sum(1)[None, :]
        codes = d2.argmin(1) + 1
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


_KINDS = ("user", "item")


def vectors_fingerprint(users: pl.DataFrame, items: pl.DataFrame) -> str:
    """A digest of the ids and vectors a codebook is fitted on (to reuse a saved one)."""
    import hashlib

    digest = hashlib.sha256()
    for kind, frame in zip(_KINDS, (users, items), strict=True):
        x = _matrix(frame, kind)
        digest.update(kind.encode())
        digest.update("\0".join(frame["entity_id"].cast(pl.Utf8).to_list()).encode())
        digest.update(np.ascontiguousarray(x).tobytes())
    return digest.hexdigest()[:16]


@dataclass
class KnowledgeCodebooks:
    """One codebook per knowledge kind, fitted on the adapted vectors of a training run.

    Saved beside the adapted vectors, so a refresh assigns codes to new vectors with the
    codebook the published codes came from (never refitted there). An artifact saved as one
    ``.npz`` file that holds its manifest (:mod:`kar.artifacts`).
    """

    KIND: ClassVar[str] = "knowledge_codebooks"
    user: KnowledgeCodebook
    item: KnowledgeCodebook
    size: int  # the configured size (each kind's k may be smaller: capped by distinct vectors)
    seed: int = 0
    fingerprint: str = ""

    @classmethod
    def fit(
        cls, users: pl.DataFrame, items: pl.DataFrame, size: int = 64, seed: int = 0
    ) -> KnowledgeCodebooks:
        """k-means per kind over (entity_id, vector) frames."""
        return cls(
            user=KnowledgeCodebook.fit(users, size, seed, "user"),
            item=KnowledgeCodebook.fit(items, size, seed, "item"),
            size=size,
            seed=seed,
            fingerprint=vectors_fingerprint(users, items),
        )

    def codebook(self, kind: str) -> KnowledgeCodebook:
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'user' or 'item', not {kind!r}")
        return self.user if kind == "user" else self.item

    def with_codes(self, kind: str, vectors: pl.DataFrame, column: str = "code") -> pl.DataFrame:
        """``vectors`` plus an Int64 ``column``: each row's nearest centroid, 1..k."""
        codes = self.codebook(kind).assign(vectors, kind)["code"]
        return vectors.with_columns(codes.alias(column))

    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` (centroids per kind + JSON metadata; no pickled objects)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = manifest(
            self.KIND, 1, size=self.size, seed=self.seed, fingerprint=self.fingerprint
        )  # one file: its manifest inside (kar.artifacts)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                user=self.user.centroids,
                item=self.item.centroids,
                meta=np.array(json.dumps(meta)),
            )
        return tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeCodebooks:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = check_manifest(json.loads(str(data["meta"])), cls.KIND, path)
                user, item = data["user"], data["item"]
        except FileNotFoundError:
            raise ConfigError(f"no knowledge codebook at {path}") from None
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{path}: not a knowledge codebook file: {exc}") from exc
        for kind, centroids in (("user", user), ("item", item)):
            if centroids.ndim != 2 or not len(centroids):
                raise ConfigError(f"{path}: field {kind!r}: centroids must be a non-empty matrix")
        return cls(
            user=KnowledgeCodebook(user.astype(np.float32)),
            item=KnowledgeCodebook(item.astype(np.float32)),
            size=int(meta.get("size", max(len(user), len(item)))),
            seed=int(meta.get("seed", 0)),
            fingerprint=str(meta.get("fingerprint", "")),
        )

    @classmethod
    def fit_or_load(
        cls, path: str | Path, users: pl.DataFrame, items: pl.DataFrame, size: int, seed: int = 0
    ) -> KnowledgeCodebooks:
        """The codebooks saved at ``path`` when fitted on these vectors with this size and
        seed; otherwise fitted now and saved there."""
        path = Path(path)
        if path.is_file():
            try:
                saved = cls.load(path)
            except ConfigError:
                saved = None
            if (
                saved is not None
                and (saved.size, saved.seed) == (size, seed)
                and saved.fingerprint == vectors_fingerprint(users, items)
            ):
                return saved
        fitted = cls.fit(users, items, size, seed)
        fitted.save(path)
        return fitted
