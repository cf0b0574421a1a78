"""Create a kar Feast repository from the bundled template and open it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, StrictUndefined

from kar.errors import FeatureStoreError
from kar.resources import bundled_dir

if TYPE_CHECKING:
    from feast import FeatureStore

    from kar.project import FeatureSettings

SETTINGS_FILE = "kar_repo.json"
DEFINITIONS_FILE = "knowledge_features.py"
USER_VIEW, ITEM_VIEW = "user_knowledge", "item_knowledge"
USER_FEATURE, ITEM_FEATURE = "user_knowledge_vector", "item_knowledge_vector"
USER_CODE, ITEM_CODE = "user_knowledge_code", "item_knowledge_code"  # k-means code, Int64
FEATURE_SERVICE = "kar_ctr_knowledge"
LINEAGE_KEYS = ("prompt_version", "llm", "encoder", "adaptor")
DEFAULT_ONLINE_STORE: dict[str, Any] = {"type": "sqlite", "path": "data/online_store.db"}
DEFAULT_OFFLINE_STORE: dict[str, Any] = {"type": "duckdb"}


def init_feature_repo(
    dest: Path,
    project: str = "kar_demo",
    vector_dim: int = 32,
    lineage: Mapping[str, str] | None = None,
    *,
    ttl_seconds: int = 0,
    online_store: Mapping[str, Any] | None = None,
    offline_store: Mapping[str, Any] | None = None,
    registry: str | Mapping[str, Any] = "data/registry.db",
    overwrite: bool = False,
    knowledge_codes: bool = False,
) -> Path:
    """Render the bundled ``feature_repo/`` template into ``dest`` and return ``dest``.

    ``online_store`` / ``offline_store`` replace the ``feature_store.yaml`` blocks
    (default: SQLite file, DuckDB). ``ttl_seconds`` = 0 keeps a vector valid until replaced.
    ``knowledge_codes``: the views also hold an Int64 ``<entity>_knowledge_code`` (the
    k-means code of the vector); :func:`enable_codes` turns it on later, before any publish.
    """
    dest = Path(dest)
    if not project.isidentifier():
        raise FeatureStoreError(f"Feast project name {project!r} must be a Python identifier")
    if vector_dim < 1:
        raise FeatureStoreError(f"vector_dim must be positive, got {vector_dim}")
    if (dest / "feature_store.yaml").exists() and not overwrite:
        raise FeatureStoreError(f"{dest / 'feature_store.yaml'} exists (pass overwrite=True)")
    template = bundled_dir("feature_repo")
    dest.mkdir(parents=True, exist_ok=True)
    env = Environment(keep_trailing_newline=True, undefined=StrictUndefined, autoescape=False)
    for src in template.iterdir():
        if src.name == "__pycache__" or src.is_dir():
            continue
        if src.suffix == ".j2":
            text = env.from_string(src.read_text()).render(
                project=project,
                registry=registry if isinstance(registry, str) else dict(registry),
                online_store=dict(online_store or DEFAULT_ONLINE_STORE),
                offline_store=dict(offline_store or DEFAULT_OFFLINE_STORE),
            )
            (dest / src.stem).write_text(text)
        else:
            shutil.copyfile(src, dest / src.name)
    for sub in (USER_VIEW, ITEM_VIEW):
        (dest / "data" / sub).mkdir(parents=True, exist_ok=True)
    settings = {
        "project": project,
        "vector_dim": vector_dim,
        "ttl_seconds": ttl_seconds,
        "knowledge_codes": bool(knowledge_codes),
        "lineage": {key: "unset" for key in LINEAGE_KEYS},
    }
    settings["lineage"].update({str(k): str(v) for k, v in (lineage or {}).items()})
    write_settings(dest, settings)
    return dest


STORE_KEYS = ("project", "registry", "online_store")  # feature_store.yaml keys kar.yaml sets


def store_settings(
    project: str,
    online_store: Mapping[str, Any] | None,
    registry: str | Mapping[str, Any],
) -> dict[str, Any]:
    """The top-level ``feature_store.yaml`` values that kar.yaml's ``features`` section sets
    (``online_store`` None: the SQLite default)."""
    if not project.isidentifier():
        raise FeatureStoreError(f"Feast project name {project!r} must be a Python identifier")
    return {
        "project": project,
        "registry": registry if isinstance(registry, str) else dict(registry),
        "online_store": dict(online_store or DEFAULT_ONLINE_STORE),
    }


def store_differences(repo: Path, wanted: Mapping[str, Any]) -> list[str]:
    """The keys of ``wanted`` whose value differs from the repo's ``feature_store.yaml``
    (compared as written: ``${VAR}`` is not expanded)."""
    import yaml

    path = Path(repo) / "feature_store.yaml"
    if not path.is_file():
        raise FeatureStoreError(f"{path} not found: not a Feast repository")
    current = yaml.safe_load(path.read_text()) or {}
    return [key for key, value in wanted.items() if current.get(key) != value]


def sync_store_settings(repo: Path, wanted: Mapping[str, Any]) -> list[str]:
    """Rewrite the top-level keys of ``wanted`` in the repo's ``feature_store.yaml`` (one JSON
    line each, as rendered at init; other lines kept) and return those that changed.

    Publish calls it with kar.yaml's :func:`store_settings`, so an edit of
    ``features.online_store`` / ``project`` / ``registry`` takes effect at the next publish.
    """
    changed = store_differences(repo, wanted)
    if not changed:
        return []
    path = Path(repo) / "feature_store.yaml"
    kept: list[str] = []
    inside = False
    for line in path.read_text().splitlines():
        if any(line.startswith(f"{key}:") for key in changed):
            inside = True  # the key and its indented continuation lines go
            continue
        if inside and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        inside = False
        kept.append(line)
    kept += [f"{key}: {json.dumps(wanted[key])}" for key in changed]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(kept) + "\n")
    tmp.replace(path)
    return changed


def sync_project_stores(repo: Path, features: FeatureSettings) -> list[str]:
    """Write kar.yaml's ``features.project`` / ``registry`` / ``online_store`` into the
    repo's ``feature_store.yaml`` (at publish); the keys that changed."""
    wanted = store_settings(features.project, features.online_store, features.registry)
    return sync_store_settings(repo, wanted)


def require_project_stores(repo: Path, features: FeatureSettings) -> None:
    """FeatureStoreError when kar.yaml's store settings differ from ``feature_store.yaml``:
    a refresh pushes only changed rows, so a new store must first be filled by a publish.
    A repo without ``feature_store.yaml`` yet passes (the stage that needs it says so)."""
    if not (Path(repo) / "feature_store.yaml").is_file():
        return
    wanted = store_settings(features.project, features.online_store, features.registry)
    changed = store_differences(repo, wanted)
    if changed:
        keys = ", ".join(f"features.{key}" for key in changed)
        raise FeatureStoreError(
            f"kar.yaml's {keys} differs from {Path(repo) / 'feature_store.yaml'}: run "
            "`kar publish` first (it rewrites the file and fills the new store; a refresh "
            "pushes only the changed rows)"
        )


def read_settings(repo: Path) -> dict[str, Any]:
    """The repo's ``kar_repo.json`` (vector_dim, ttl_seconds, lineage)."""
    path = Path(repo) / SETTINGS_FILE
    if not (Path(repo) / "feature_store.yaml").is_file() or not path.is_file():
        raise FeatureStoreError(
            f"{repo} is not a kar feature repository (feature_store.yaml or {SETTINGS_FILE} "
            "missing; `kar publish` creates the knowledge repository and `kar embed` the "
            "embedding one, or create one with init_feature_repo)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FeatureStoreError(f"{path}: invalid JSON: {exc}") from exc


def write_settings(repo: Path, settings: Mapping[str, Any]) -> None:
    (Path(repo) / SETTINGS_FILE).write_text(json.dumps(dict(settings), indent=2) + "\n")


def codes_enabled(repo: Path) -> bool:
    """Whether the repo's knowledge views carry the ``*_knowledge_code`` field."""
    return bool(read_settings(repo).get("knowledge_codes", False))


def enable_codes(repo: Path) -> None:
    """Add the code field to the built-in views (takes effect at the next apply).

    Allowed only while no part file of those views exists: every part of a view must have
    the same columns (DuckDB reads a glob with the first file's schema).
    """
    settings = read_settings(repo)
    if settings.get("knowledge_codes"):
        return
    parts = [p for view in (USER_VIEW, ITEM_VIEW) for p in part_files(repo, view)]
    if parts:
        raise FeatureStoreError(
            f"{repo} already holds knowledge vectors without codes ({parts[0]}): "
            "publish codes to a new feature repository, or set features.codebook_size: 0"
        )
    settings["knowledge_codes"] = True
    write_settings(repo, settings)


def part_files(repo: Path, view: str) -> list[Path]:
    """The Parquet part files of a view, oldest name first."""
    return sorted((Path(repo) / "data" / view).glob("*.parquet"))


def update_lineage(repo: Path, lineage: Mapping[str, str]) -> dict[str, str]:
    """Merge ``lineage`` into the repo's settings; the tags change at the next apply."""
    settings = read_settings(repo)
    settings.setdefault("lineage", {}).update({str(k): str(v) for k, v in lineage.items()})
    write_settings(repo, settings)
    return settings["lineage"]


def feature_store(repo: Path) -> FeatureStore:
    """Open the Feast store of a kar repository (imports feast lazily)."""
    read_settings(repo)
    from feast import FeatureStore

    _quiet_dependency_warnings()
    return FeatureStore(repo_path=str(Path(repo).resolve()))


def _quiet_dependency_warnings() -> None:
    """Feast re-enables DeprecationWarnings at import; its ibis/dask ones are not ours."""
    import warnings

    for module in ("ibis", "dask", "feast"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings(  # kar's knowledge_affinity: a vectorised pandas transform
        "ignore", message="On demand feature view is an experimental", category=RuntimeWarning
    )


def load_definitions(repo: Path, definitions: str = DEFINITIONS_FILE) -> list[Any]:
    """Import the repo's ``definitions`` file afresh and return its Feast objects; for the
    knowledge definitions, plus the ``knowledge_affinity`` on-demand view once both kinds
    are published (:mod:`kar.features.affinity`)."""
    import importlib.util

    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.on_demand_feature_view import OnDemandFeatureView

    path = Path(repo).resolve() / definitions
    if not path.is_file():
        raise FeatureStoreError(f"{path} not found: the repo has no Feast definitions")
    spec = importlib.util.spec_from_file_location(f"_kar_feature_repo_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise FeatureStoreError(f"{path}: cannot load the Feast definitions: {exc}") from exc
    kinds = (Entity, DataSource, FeatureView, OnDemandFeatureView, FeatureService)
    objects: list[Any] = []
    for value in vars(module).values():
        if isinstance(value, kinds) and not any(value is seen for seen in objects):
            objects.append(value)
    if definitions == DEFINITIONS_FILE:  # the knowledge repo: + the user x item affinity
        from kar.features.affinity import affinity_objects

        objects = affinity_objects(
            objects,
            user_view=USER_VIEW,
            item_view=ITEM_VIEW,
            service=FEATURE_SERVICE,
            unpublished=[v for v in (USER_VIEW, ITEM_VIEW) if not part_files(repo, v)],
        )
    return objects


def apply_repo(
    repo: Path, store: FeatureStore | None = None, definitions: str = DEFINITIONS_FILE
) -> FeatureStore:
    """``feast apply`` through the Python API: register the ``definitions`` file's objects
    (the knowledge views by default), create the online tables."""
    store = store or feature_store(repo)
    objects = load_definitions(repo, definitions)
    try:
        store.apply(objects)
    except Exception as exc:
        raise FeatureStoreError(f"feast apply failed in {repo}: {exc}") from exc
    return store
