"""Feast definitions for kar's knowledge vectors (one per user, one per item).

With ``knowledge_codes`` on, each view also holds the vector's discrete k-means code
(``user_knowledge_code`` / ``item_knowledge_code``, Int64, 1..k) as a categorical feature.
Settings (vector dimension, TTL, codes, lineage tags) come from ``kar_repo.json`` beside this
file, written by ``kar.features.init_feature_repo`` and updated by ``kar.features.publish``.
The offline side is a folder of Parquet part files per entity: each publish adds one
file, earlier files stay (append-only), and point-in-time joins pick the right version.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, Int64

REPO_DIR = Path(__file__).resolve().parent
_SETTINGS_FILE = REPO_DIR / "kar_repo.json"
SETTINGS: dict = json.loads(_SETTINGS_FILE.read_text()) if _SETTINGS_FILE.exists() else {}
VECTOR_DIM = int(SETTINGS.get("vector_dim", 32))
TTL = timedelta(seconds=int(SETTINGS.get("ttl_seconds", 0)))  # 0: valid until replaced
CODES = bool(SETTINGS.get("knowledge_codes", False))
LINEAGE = {str(k): str(v) for k, v in SETTINGS.get("lineage", {}).items()}
TAGS = {"kar.vector_dim": str(VECTOR_DIM), **{f"kar.{k}": v for k, v in LINEAGE.items()}}
TAGS["kar.knowledge_codes"] = str(CODES).lower()

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A user")
item = Entity(
    name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="An item"
)


def _parquet_parts(name: str) -> FileSource:
    # Absolute glob: the DuckDB offline store reads the path as given (not repo-relative).
    return FileSource(
        name=f"{name}_parquet",
        path=str(REPO_DIR / "data" / name / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        description=f"Parquet part files of {name}, one per publish",
    )


def _schema(entity: str) -> list[Field]:
    fields = [Field(name=f"{entity}_knowledge_vector", dtype=Array(Float32))]
    if CODES:
        fields.append(Field(name=f"{entity}_knowledge_code", dtype=Int64))
    return fields


user_knowledge_source = _parquet_parts("user_knowledge")
item_knowledge_source = _parquet_parts("item_knowledge")

user_knowledge_push = PushSource(name="user_knowledge_push", batch_source=user_knowledge_source)
item_knowledge_push = PushSource(name="item_knowledge_push", batch_source=item_knowledge_source)

user_knowledge = FeatureView(
    name="user_knowledge",
    entities=[user],
    ttl=TTL,
    schema=_schema("user"),
    source=user_knowledge_push,
    online=True,
    tags={**TAGS, "kar.kind": "user_preference"},
    description="LLM reasoning about the user's preferences, compressed by the KAR adaptor",
)
item_knowledge = FeatureView(
    name="item_knowledge",
    entities=[item],
    ttl=TTL,
    schema=_schema("item"),
    source=item_knowledge_push,
    online=True,
    tags={**TAGS, "kar.kind": "item_fact"},
    description="LLM factual knowledge about the item, compressed by the KAR adaptor",
)

kar_ctr_knowledge = FeatureService(
    name="kar_ctr_knowledge",
    features=[user_knowledge, item_knowledge],
    tags=TAGS,
    description="Knowledge vectors for CTR models (user reasoning + item facts)",
)


# Declared knowledge features (`kar features add`): one set of objects per active version,
# named <name>_v<version>, so versions coexist until one is retired.
def _declared(decl: dict) -> list:
    view_name = f"{decl['name']}_v{decl['version']}"
    tags = {
        "kar.feature": decl["name"],
        "kar.version": str(decl["version"]),
        "kar.vector_dim": str(decl["dim"]),
        **{
            f"kar.{k}": str(decl.get(k, "unset"))
            for k in ("kind", "scenario", "prompt_version", "llm", "encoder", "adaptor")
        },
    }
    batch = _parquet_parts(view_name)
    push = PushSource(name=f"{view_name}_push", batch_source=batch)
    view = FeatureView(
        name=view_name,
        entities=[user if decl["entity"] == "user" else item],
        ttl=TTL,
        schema=[Field(name=decl["name"], dtype=Array(Float32))],
        source=push,
        online=True,
        tags=tags,
        description=decl.get("description") or f"kar knowledge feature {view_name}",
    )
    service = FeatureService(name=f"{view_name}_service", features=[view], tags=tags)
    return [batch, push, view, service]


DECLARED = [
    obj
    for decl in SETTINGS.get("features", [])
    if not decl.get("retired")
    for obj in _declared(decl)
]
globals().update({obj.name: obj for obj in DECLARED})  # feast apply collects module globals
