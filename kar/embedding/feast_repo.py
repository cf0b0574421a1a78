"""Feast repository of LLM embeddings: vector-indexed item / user views, i2i and u2i search.

Only what is specific to vector views lives here; settings, store opening and ``feast
apply`` are :mod:`kar.features.repo`'s, shared with the knowledge views (``kar_repo.json``
with ``kind: embedding``). A repository of its own (beside the project's knowledge
``feature_repo/``), because vector search needs a vector-capable online store, and Feast
has one online store per repository:

- PostgreSQL with pgvector (the default: ``vector_enabled: true``; the extension is created
  in the database at init when missing),
- SQLite with sqlite-vec, which Feast 0.67 loads only on Python 3.10 (and only where the
  interpreter's sqlite3 can load extensions): refused elsewhere with a clear error.

Views ``item_embedding`` (fields ``item_embedding`` vector-indexed, ``item_text``) and
``user_embedding`` (``user_embedding`` vector-indexed), both cosine. Search goes through
Feast's ``retrieve_online_documents_v2``; the query vector of an item or a user is read with
``get_online_features``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import yaml

from kar.errors import DataValidationError, FeatureStoreError
from kar.features.repo import SETTINGS_FILE, apply_repo, feature_store, read_settings
from kar.features.repo import write_settings as write_repo_settings
from kar.features.stores import online_location, postgres_connection

if TYPE_CHECKING:
    from feast import FeatureStore

DEFINITIONS_FILE = "embedding_features.py"
KIND = "embedding"  # kar_repo.json's kind: a vector-indexed embedding repository
ITEM_VIEW, USER_VIEW = "item_embedding", "user_embedding"
ITEM_TEXT = "item_text"
# The item id again, as a feature: in Feast 0.67 retrieve_online_documents_v2 returns the
# join-key column in distance order but the feature columns (distance included) in the
# order of the sorted entity keys, so only the features agree with each other row by row.
ITEM_REF = "item_ref"
DEFAULT_ONLINE_STORE: dict[str, Any] = {
    "type": "postgres",
    "host": "127.0.0.1",
    "port": 5432,
    "database": "test",
    "user": "postgres",
    "password": "",
    "sslmode": "disable",
    "vector_enabled": True,
}

DEFINITIONS = '''"""Feast definitions of kar's LLM embeddings (written by kar.embedding.feast_repo).

Vector-indexed views for i2i / u2i search with retrieve_online_documents_v2; dimensions
and lineage come from kar_repo.json beside this file.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, String

REPO_DIR = Path(__file__).resolve().parent
SETTINGS = json.loads((REPO_DIR / "kar_repo.json").read_text())
TAGS = {f"kar.{k}": str(v) for k, v in SETTINGS.get("lineage", {}).items()}

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)


def _source(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_parquet",
        path=str(REPO_DIR / "data" / name / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )


def _vector(name: str, dim: int) -> Field:
    return Field(
        name=name,
        dtype=Array(Float32),
        vector_index=True,
        vector_length=dim,
        vector_search_metric="cosine",  # pgvector spells it so (<=>)
    )


item_embedding = FeatureView(
    name="item_embedding",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        _vector("item_embedding", SETTINGS["item_dim"]),
        Field(name="item_text", dtype=String),
        Field(name="item_ref", dtype=String),  # the id again (see kar.embedding.feast_repo)
    ],
    source=_source("item_embedding"),
    online=True,
    tags={**TAGS, "kar.kind": "item_embedding", "kar.vector_dim": str(SETTINGS["item_dim"])},
    description="LLM / encoder item embedding (i2i and u2i retrieval, cold start)",
)
user_embedding = FeatureView(
    name="user_embedding",
    entities=[user],
    ttl=timedelta(0),
    schema=[_vector("user_embedding", SETTINGS["user_dim"])],
    source=_source("user_embedding"),
    online=True,
    tags={**TAGS, "kar.kind": "user_embedding", "kar.vector_dim": str(SETTINGS["user_dim"])},
    description="User tower embedding, in the item embedding space (u2i retrieval)",
)
'''


def check_vector_store(online_store: Mapping[str, Any]) -> None:
    """Raise FeatureStoreError unless the store can do vector search here (pgvector ready)."""
    kind = online_store.get("type", "sqlite")
    if not online_store.get("vector_enabled"):
        raise FeatureStoreError(f"online store {kind}: set vector_enabled: true for vector search")
    if kind == "sqlite":
        import sqlite3

        loadable = hasattr(sqlite3.connect(":memory:"), "enable_load_extension")
        if sys.version_info[:2] != (3, 10) or not loadable:
            raise FeatureStoreError(
                "Feast 0.67 loads sqlite-vec only on Python 3.10 with a sqlite3 that can load "
                f"extensions (this is Python {sys.version_info[0]}.{sys.version_info[1]}, "
                f"load_extension {'available' if loadable else 'missing'}): use the postgres "
                "online store with pgvector"
            )
        return
    if kind != "postgres":
        raise FeatureStoreError(
            f"online store {kind!r}: kar's embedding repo supports postgres (pgvector) and sqlite"
        )
    where = online_location(online_store)
    try:
        with postgres_connection(online_store, timeout_s=3, autocommit=True) as conn:
            have = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            if have is None:
                available = conn.execute(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
                ).fetchone()
                if available is None:
                    raise FeatureStoreError(
                        f"PostgreSQL at {where} has no pgvector extension installed: install "
                        "it on the server (Debian: postgresql-<version>-pgvector; .ci/run builds "
                        "it from Debian's source package when the binary package is missing)"
                    )
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except FeatureStoreError:
        raise
    except Exception as exc:
        raise FeatureStoreError(
            f"PostgreSQL online store at {where} is unreachable or refused pgvector "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def init_embedding_repo(
    dest: Path,
    project: str,
    item_dim: int,
    user_dim: int | None = None,
    *,
    online_store: Mapping[str, Any] | None = None,
    lineage: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``feature_store.yaml``, the definitions and settings into ``dest``; return it."""
    dest = Path(dest)
    if not project.isidentifier():
        raise FeatureStoreError(f"Feast project name {project!r} must be a Python identifier")
    if item_dim < 1 or (user_dim is not None and user_dim < 1):
        raise FeatureStoreError(f"dimensions must be positive (item {item_dim}, user {user_dim})")
    settings_path = dest / SETTINGS_FILE
    if settings_path.exists():
        current = json.loads(settings_path.read_text())
        if current.get("kind") != KIND:
            raise FeatureStoreError(
                f"{dest} is a kar knowledge feature repository: give the embeddings a folder "
                "of their own (embedding.feast.repo)"
            )
        if not overwrite:
            if current.get("item_dim") == item_dim and current.get("project") == project:
                return dest
            raise FeatureStoreError(
                f"{settings_path} exists for project {current.get('project')!r} with item_dim "
                f"{current.get('item_dim')} (asked {project!r}, {item_dim}): pass overwrite=True"
            )
    online = dict(online_store or DEFAULT_ONLINE_STORE)
    check_vector_store(online)
    for view in (ITEM_VIEW, USER_VIEW):
        (dest / "data" / view).mkdir(parents=True, exist_ok=True)
    config = {
        "project": project,
        "provider": "local",
        "registry": "data/registry.db",
        "online_store": online,
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }
    (dest / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (dest / DEFINITIONS_FILE).write_text(DEFINITIONS)
    (dest / ".feastignore").write_text("data/\n")
    settings = {
        "kind": KIND,
        "project": project,
        "item_dim": int(item_dim),
        "user_dim": int(user_dim or item_dim),
        "lineage": {str(k): str(v) for k, v in (lineage or {}).items()},
    }
    write_repo_settings(dest, settings)
    return dest


def open_store(repo: Path) -> FeatureStore:
    """The Feast store of an embedding repository: :func:`kar.features.repo.feature_store`."""
    return feature_store(repo)


@dataclass
class EmbeddingPublishReport:
    """What a publish wrote, and the seconds it took."""

    items: int
    users: int
    files: list[Path]
    seconds: float


def _vector_rows(
    frame: pl.DataFrame, key: str, feature: str, dim: int, now: datetime
) -> pl.DataFrame:
    for column in ("entity_id", "vector"):
        if column not in frame.columns:
            raise DataValidationError(f"{key} vectors lack column {column!r}", field=column)
    lengths = frame["vector"].list.len()
    bad = (lengths != dim).arg_true()
    if bad.len():
        i = int(bad[0])
        raise DataValidationError(
            f"{key} {frame['entity_id'][i]!r}: vector has {lengths[i]} values, expected {dim}",
            row=i + 1,
            field="vector",
        )
    matrix = frame["vector"].list.to_array(dim).to_numpy()
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataValidationError(
            f"{key} {frame['entity_id'][i]!r}: vector holds NaN or inf", row=i + 1, field="vector"
        )
    if frame["entity_id"].is_duplicated().any():
        dup = frame.filter(pl.col("entity_id").is_duplicated())["entity_id"][0]
        raise DataValidationError(f"{key} {dup!r} appears more than once", field="entity_id")
    return frame.select(
        pl.col("entity_id").cast(pl.Utf8).alias(key),
        pl.col("vector").cast(pl.List(pl.Float32)).alias(feature),
        pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("event_timestamp"),
        pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("created"),
    )


def publish_embeddings(
    repo: Path,
    items: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    texts: Mapping[str, str] | None = None,
) -> EmbeddingPublishReport:
    """Write item / user vectors (frames ``entity_id``, ``vector``) offline (a Parquet part)
    and online (Feast ``write_to_online_store``), after ``feast apply``."""
    started = time.perf_counter()
    settings = read_settings(repo)
    now = datetime.now(UTC)
    store = apply_repo(repo, definitions=DEFINITIONS_FILE)
    files: list[Path] = []
    counts = {"item": 0, "user": 0}
    stamp = now.strftime("%Y%m%dT%H%M%S%f")
    for kind, frame, view, dim in (
        ("item", items, ITEM_VIEW, settings["item_dim"]),
        ("user", users, USER_VIEW, settings["user_dim"]),
    ):
        if frame is None or frame.height == 0:
            continue
        rows = _vector_rows(frame, f"{kind}_id", view, int(dim), now)
        if kind == "item":
            text = texts or {}
            rows = rows.with_columns(
                pl.col("item_id").replace_strict(text, default="").alias(ITEM_TEXT),
                pl.col("item_id").alias(ITEM_REF),
            )
        path = Path(repo) / "data" / view / f"part-{stamp}.parquet"
        rows.write_parquet(path)
        files.append(path)
        try:
            store.write_to_online_store(view, df=rows.to_pandas())
        except Exception as exc:
            raise FeatureStoreError(f"writing {view} to the online store failed: {exc}") from exc
        counts[kind] = rows.height
    return EmbeddingPublishReport(
        counts["item"], counts["user"], files, time.perf_counter() - started
    )


@dataclass(frozen=True)
class Neighbour:
    """One search hit: id, cosine distance (0 = same direction), and the item text if any."""

    entity_id: str
    distance: float
    text: str | None = None


def online_vector(repo: Path, kind: str, entity_id: str, store: Any = None) -> np.ndarray:
    """The vector of one item or user, read from the online store with get_online_features."""
    view = ITEM_VIEW if kind == "item" else USER_VIEW
    store = store or feature_store(repo)
    key = f"{kind}_id"
    out = store.get_online_features([f"{view}:{view}"], entity_rows=[{key: entity_id}]).to_dict()
    value = out[view][0]
    if value is None:
        raise FeatureStoreError(
            f"{kind} {entity_id!r} has no embedding in the online store of {repo}"
        )
    return np.asarray(value, dtype=np.float32)


def nearest_items(
    repo: Path, vector: Sequence[float], k: int = 10, exclude: Sequence[str] = (), store: Any = None
) -> list[Neighbour]:
    """The ``k`` items nearest to ``vector`` (cosine), through retrieve_online_documents_v2."""
    if k < 1:
        raise FeatureStoreError(f"k must be >= 1, got {k}")
    store = store or feature_store(repo)
    response = store.retrieve_online_documents_v2(
        features=[f"{ITEM_VIEW}:{ITEM_REF}", f"{ITEM_VIEW}:{ITEM_TEXT}"],
        query=[float(x) for x in vector],
        top_k=k + len(exclude),
        distance_metric="cosine",
    ).to_dict()
    skip = set(exclude)
    hits = [
        Neighbour(str(i), float(d), t)
        for i, d, t in zip(
            response[ITEM_REF], response["distance"], response[ITEM_TEXT], strict=True
        )
        if str(i) not in skip
    ]
    return sorted(hits, key=lambda h: h.distance)[:k]


def similar_items(repo: Path, item_id: str, k: int = 10) -> list[Neighbour]:
    """i2i: the ``k`` items nearest to ``item_id``'s embedding (the item itself left out)."""
    store = feature_store(repo)
    return nearest_items(repo, online_vector(repo, "item", item_id, store), k, [item_id], store)


def recommend_items(repo: Path, user_id: str, k: int = 10) -> list[Neighbour]:
    """u2i: the ``k`` items nearest to ``user_id``'s tower embedding."""
    store = feature_store(repo)
    return nearest_items(repo, online_vector(repo, "user", user_id, store), k, (), store)
