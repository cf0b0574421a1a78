"""Online store and registry settings of a kar repo, and a reachability check before writes.

The stores are chosen in configuration only (``feature_store.yaml``, rendered from
``kar.yaml``'s ``features`` section); every code path is the same for SQLite, Redis and
PostgreSQL. ``${VAR}`` in ``feature_store.yaml`` is expanded from the environment by
Feast (and here), so passwords stay out of files and logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kar.errors import FeatureStoreError
from kar.redaction import redact_url


def repo_config(repo: Path) -> dict[str, Any]:
    """``feature_store.yaml`` with environment variables expanded (as Feast reads it)."""
    path = Path(repo) / "feature_store.yaml"
    try:
        return yaml.safe_load(os.path.expandvars(path.read_text())) or {}
    except OSError as exc:
        raise FeatureStoreError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise FeatureStoreError(f"{path}: not valid YAML: {exc}") from exc


def describe_stores(repo: Path) -> dict[str, str]:
    """Online store and registry kinds and hosts, safe to print (no passwords)."""
    cfg = repo_config(repo)
    online = cfg.get("online_store") or {"type": "sqlite"}
    registry = cfg.get("registry")
    if isinstance(registry, Mapping) and registry.get("registry_type") == "sql":
        reg = f"sql ({redact_url(registry.get('path', ''))})"
    else:
        reg = "file"
    kind = online.get("type", "sqlite")
    return {"online_store": f"{kind} ({online_location(online)})", "registry": reg}


def _redis_target(online: Mapping[str, Any]) -> tuple[str, int, dict[str, Any]]:
    first, *options = str(online.get("connection_string", "localhost:6379")).split(",")
    host, _, port = first.strip().rpartition(":")
    kwargs: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key.strip() in ("password", "username", "db"):
            kwargs[key.strip()] = value.strip()
        elif key.strip() == "ssl":
            kwargs["ssl"] = value.strip().lower() == "true"
    return host or "localhost", int(port or 6379), kwargs


def online_location(online: Mapping[str, Any]) -> str:
    """Where an online store block points: host:port[/database] or the SQLite path."""
    kind = online.get("type", "sqlite")
    if kind == "redis":
        host, port, _ = _redis_target(online)
        return f"{host}:{port}"
    if kind == "postgres":
        host, port = online.get("host", "localhost"), online.get("port", 5432)
        return f"{host}:{port}/{online.get('database')}"
    return str(online.get("path", "data/online_store.db"))


def postgres_connection(
    online: Mapping[str, Any], timeout_s: float = 2.0, autocommit: bool = False
) -> Any:
    """A psycopg connection to a ``type: postgres`` online store block (Feast's keys)."""
    import psycopg

    return psycopg.connect(
        host=online.get("host", "localhost"),
        port=int(online.get("port", 5432)),
        dbname=online.get("database"),
        user=online.get("user"),
        password=online.get("password") or None,
        sslmode=online.get("sslmode") or "prefer",
        connect_timeout=max(1, int(timeout_s)),
        autocommit=autocommit,
    )


def check_online_store(repo: Path, timeout_s: float = 2.0) -> None:
    """Raise FeatureStoreError, naming the store and host, when it cannot be reached."""
    cfg = repo_config(repo)
    online = cfg.get("online_store") or {"type": "sqlite"}
    kind = online.get("type", "sqlite")
    try:
        if kind == "redis":
            import redis

            host, port, kwargs = _redis_target(online)
            client = redis.Redis(
                host=host,
                port=port,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                **kwargs,
            )
            try:
                client.ping()
            finally:
                client.close()
        elif kind == "postgres":
            postgres_connection(online, timeout_s).close()
    except Exception as exc:
        raise FeatureStoreError(
            f"online store {kind} at {online_location(online)} is unreachable "
            f"({type(exc).__name__}: {exc}); nothing was written — start it and run the same "
            "publish again (a retry writes no duplicate rows)"
        ) from exc
