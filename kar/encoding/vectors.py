"""EntityVectors: one encoded knowledge vector per user and per item, saved as Parquet."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import polars as pl

from kar.artifacts import prepare_folder, read_manifest, write_manifest
from kar.errors import DataValidationError, KarError

USER_FILE = "user_vectors.parquet"
ITEM_FILE = "item_vectors.parquet"
META_FILE = "meta.json"
FORMAT_VERSION = 1

EntityKind = Literal["user", "item"]


def vectors_frame(ids: Sequence[str], matrix: np.ndarray) -> pl.DataFrame:
    """Frame (entity_id str, vector list[f32]) from ids and a (n, dim) matrix."""
    matrix = np.asarray(matrix, dtype=np.float32)
    return pl.DataFrame(
        {
            "entity_id": pl.Series(list(ids), dtype=pl.Utf8),
            "vector": pl.Series(list(matrix), dtype=pl.List(pl.Float32)),
        },
        schema={"entity_id": pl.Utf8, "vector": pl.List(pl.Float32)},
    )


def _to_matrix(frame: pl.DataFrame, dim: int) -> np.ndarray:
    if frame.height == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return frame["vector"].list.to_array(dim).to_numpy().astype(np.float32, copy=False)


@dataclass
class EntityVectors:
    """Encoded knowledge: ``users`` and ``items`` frames (entity_id, vector), all of ``dim``."""

    KIND: ClassVar[str] = "encoded_vectors"  # an artifact (kar.artifacts)
    users: pl.DataFrame
    items: pl.DataFrame
    dim: int
    encoder_id: str
    _index: dict[str, tuple[dict[str, int], np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for kind, frame in (("user", self.users), ("item", self.items)):
            if set(frame.columns) < {"entity_id", "vector"}:
                raise KarError(f"{kind} vectors need columns entity_id and vector: {frame.columns}")
            if frame["entity_id"].is_duplicated().any():
                dup = frame.filter(pl.col("entity_id").is_duplicated())["entity_id"][0]
                raise KarError(f"{kind} vectors hold entity_id {dup!r} more than once")
            lengths = frame["vector"].list.len().unique().to_list()
            if frame.height and lengths != [self.dim]:
                raise KarError(f"{kind} vectors have lengths {lengths}, expected dim {self.dim}")

    def frame(self, kind: EntityKind) -> pl.DataFrame:
        if kind == "user":
            return self.users
        if kind == "item":
            return self.items
        raise KarError(f"unknown entity kind {kind!r}; expected 'user' or 'item'")

    def matrix(self, kind: EntityKind, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``ids`` in order, and a bool mask of ids without knowledge (zero rows)."""
        if kind not in self._index:
            frame = self.frame(kind)
            positions = {key: i for i, key in enumerate(frame["entity_id"].to_list())}
            self._index[kind] = (positions, _to_matrix(frame, self.dim))
        positions, matrix = self._index[kind]
        rows = np.array([positions.get(str(key), -1) for key in ids], dtype=np.int64)
        missing = rows < 0
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        out[~missing] = matrix[rows[~missing]]
        return out, missing

    def save(self, directory: str | Path) -> Path:
        """Write user_vectors.parquet, item_vectors.parquet, meta.json and the manifest
        (:mod:`kar.artifacts`)."""
        directory = prepare_folder(directory)
        self.users.write_parquet(directory / USER_FILE)
        self.items.write_parquet(directory / ITEM_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "encoder_id": self.encoder_id,
            "users": self.users.height,
            "items": self.items.height,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        files = [META_FILE, USER_FILE, ITEM_FILE]
        write_manifest(directory, self.KIND, FORMAT_VERSION, files=files, **meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> EntityVectors:
        """Read a folder written by ``save``."""
        directory = Path(directory)
        read_manifest(directory, cls.KIND, (META_FILE, USER_FILE, ITEM_FILE))
        try:
            meta = json.loads((directory / META_FILE).read_text())
            dim, encoder_id = int(meta["dim"]), str(meta["encoder_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataValidationError(
                f"invalid meta: {exc}", file=directory / META_FILE, field="dim/encoder_id"
            ) from exc
        users = pl.read_parquet(directory / USER_FILE)
        items = pl.read_parquet(directory / ITEM_FILE)
        return cls(users=users, items=items, dim=dim, encoder_id=encoder_id)
