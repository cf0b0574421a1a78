"""On-disk vector cache: (model_id, sha256 of text) -> float32 vector, in one SQLite file."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kar.errors import KarError, KnowledgeStoreError

# Stay below SQLite's historical limit of 999 bound parameters per statement.
_CHUNK = 900
_BUSY_MS = 30_000  # how long a write waits for another process's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model_id  TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector    BLOB NOT NULL,
    PRIMARY KEY (model_id, text_hash)
) WITHOUT ROWID
"""


def text_hash(text: str) -> str:
    """Hex sha256 of the UTF-8 text: the cache key of one text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """SQLite errors on the cache file as one-line errors saying what to do."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "malformed" in text or "not a database" in text:
            raise KnowledgeStoreError(
                f"vector cache {path} is damaged ({text}); it only saves time: delete it "
                "and rerun (the vectors are computed again)"
            ) from None
        if "locked" in text:
            raise KnowledgeStoreError(
                f"vector cache {path} stayed locked by another process for over "
                f"{_BUSY_MS // 1000} s; rerun when the other kar command has finished"
            ) from None
        raise KarError(f"vector cache {path} cannot be used: {text}") from None


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class VectorCache:
    """Vectors keyed by encoder id and text hash; batch reads and writes.

    ``hits`` / ``misses`` count lookups over the life of this object.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KarError(f"vector cache folder {self.path.parent}: {exc}") from None
        with _sqlite_errors(self.path):
            self._conn = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(_SCHEMA)
            self._conn.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, model_id: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the cached vectors among ``hashes`` (absent keys are misses)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            query = (
                "SELECT text_hash, vector FROM vectors "
                f"WHERE model_id = ? AND text_hash IN ({marks})"
            )
            with _sqlite_errors(self.path):
                rows = self._conn.execute(query, (model_id, *chunk)).fetchall()
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        self.hits += len(found)
        self.misses += len(wanted) - len(found)
        return found

    def put_many(self, model_id: str, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store one vector per hash (rows of ``vectors``) in one transaction."""
        if len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes but {len(vectors)} vectors")
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        with _sqlite_errors(self.path), self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors (model_id, text_hash, vector) VALUES (?, ?, ?)",
                ((model_id, key, row.tobytes()) for key, row in zip(hashes, data, strict=True)),
            )

    def count(self, model_id: str | None = None) -> int:
        """Number of cached vectors, for one encoder or all."""
        query, args = "SELECT COUNT(*) FROM vectors", ()
        if model_id is not None:
            query, args = f"{query} WHERE model_id = ?", (model_id,)
        with _sqlite_errors(self.path):
            return self._conn.execute(query, args).fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> VectorCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VectorCache({str(self.path)!r}, hits={self.hits}, misses={self.misses})"
