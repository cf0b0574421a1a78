"""Feast's batch engine of a kar feature repository (``batch_engine`` in feature_store.yaml).

``features.batch_engine: ray`` in kar.yaml runs materialisation on Feast's Ray compute
engine (``type: ray.engine``, Feast 0.67; ``pip install 'kar[ray]'``); ``local`` (default)
is Feast's in-process engine. :func:`sync_batch_engine` writes the section at ``kar init``
and before each publish, so a change in kar.yaml takes effect at the next publish. Training
sets are not affected: Feast reads them through the offline store (DuckDB here) whatever
the batch engine is.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kar.errors import FeatureStoreError

if TYPE_CHECKING:
    from kar.project import FeatureSettings

ENGINE_TYPES = {"local": None, "ray": "ray.engine"}
# the default online store is one SQLite file: one writer at a time
RAY_DEFAULTS: dict[str, Any] = {"write_concurrency": 1}
_KEY = "batch_engine:"


def batch_engine_config(
    kind: str, options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``batch_engine`` block for ``kind`` (None: Feast's local engine), checked.

    ``options``: more fields of Feast's engine config (e.g. ``ray_address``,
    ``max_workers``); an unknown field is an error naming it.
    """
    options = dict(options or {})
    if kind not in ENGINE_TYPES:
        raise FeatureStoreError(
            f"features.batch_engine: {kind!r} is not one of {', '.join(ENGINE_TYPES)}"
        )
    if kind == "local":
        if options:
            raise FeatureStoreError(
                "features.batch_engine_options: the local engine takes no options "
                f"(got {', '.join(sorted(options))})"
            )
        return None
    if "type" in options:
        raise FeatureStoreError(
            "features.batch_engine_options.type: set features.batch_engine instead"
        )
    if importlib.util.find_spec("ray") is None:
        raise FeatureStoreError("features.batch_engine 'ray' needs Ray: pip install 'kar[ray]'")
    from feast.infra.compute_engines.ray.config import RayComputeEngineConfig
    from pydantic import ValidationError

    block = {"type": ENGINE_TYPES[kind], **RAY_DEFAULTS, **options}
    try:
        RayComputeEngineConfig(**block)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise FeatureStoreError(f"features.batch_engine_options.{field}: {first['msg']}") from exc
    return block


def read_batch_engine(repo: Path) -> dict[str, Any] | None:
    """The repo's ``batch_engine`` block as Feast reads it (None: not set, the local one)."""
    import yaml

    path = Path(repo) / "feature_store.yaml"
    if not path.is_file():
        raise FeatureStoreError(f"{path} not found: not a Feast repository")
    engine = (yaml.safe_load(path.read_text()) or {}).get("batch_engine")
    return {"type": engine} if isinstance(engine, str) else engine


def set_batch_engine(repo: Path, block: Mapping[str, Any] | None) -> bool:
    """Make ``block`` the repo's ``batch_engine`` (None: none, Feast's local engine).

    Only that top-level key of feature_store.yaml is rewritten (one JSON line, as the other
    blocks are); the rest of the file is kept as it is. Returns whether the file changed.
    """
    path = Path(repo) / "feature_store.yaml"
    if read_batch_engine(repo) == (dict(block) if block else None):
        return False
    lines = path.read_text().splitlines()
    kept: list[str] = []
    inside = False
    for line in lines:
        if line.startswith(_KEY):
            inside = True  # the key and its indented continuation lines go
            continue
        if inside and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        inside = False
        kept.append(line)
    if block:
        kept.append(f"{_KEY} {json.dumps(dict(block))}")
    path.write_text("\n".join(kept) + "\n")
    return True


def sync_batch_engine(repo: Path, features: FeatureSettings) -> bool:
    """Write kar.yaml's ``features.batch_engine`` into the repo; whether it changed."""
    block = batch_engine_config(features.batch_engine, features.batch_engine_options)
    return set_batch_engine(repo, block)
