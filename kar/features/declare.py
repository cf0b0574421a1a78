"""Declared knowledge features: versioned, registered in the repo, shown by the CLI.

A declaration names one knowledge feature version (entity, scenario, knowledge kind,
encoder, adaptor, dimension and lineage). Declarations live in the repo's
``kar_repo.json`` under ``features``; the template's ``knowledge_features.py`` turns each
active one into Feast objects named ``<name>_v<version>`` (feature view, Parquet batch
source, push source, feature service), so versions coexist until one is retired.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kar.errors import FeatureStoreError
from kar.features.repo import apply_repo, read_settings, write_settings

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED = ("user_knowledge", "item_knowledge")  # the built-in, unversioned views


class KnowledgeFeature(BaseModel):
    """One version of a knowledge feature (what a feature engineer declares)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(1, ge=1)
    entity: Literal["user", "item"]
    scenario: str
    kind: str = ""  # knowledge kind, e.g. user_preference / item_fact (default by entity)
    prompt_version: str = "unset"
    llm: str = "unset"
    encoder: str = "unset"
    adaptor: str = "unset"  # the adaptor run that produced the vectors
    dim: int = Field(32, ge=1, le=65536)
    description: str = ""
    retired: bool = False

    def model_post_init(self, _context: Any) -> None:
        if not _NAME.match(self.name) or self.name in RESERVED:
            raise ValueError(
                f"name {self.name!r} must be lower-case letters, digits and '_', start with a "
                f"letter, and not be one of {RESERVED}"
            )
        if not self.kind:
            default = "user_preference" if self.entity == "user" else "item_fact"
            object.__setattr__(self, "kind", default)

    @property
    def view(self) -> str:
        """Feature view (and push source / folder) name of this version."""
        return f"{self.name}_v{self.version}"

    @property
    def ref(self) -> str:
        """Feast feature reference ``view:feature``."""
        return f"{self.view}:{self.name}"

    @property
    def join_key(self) -> str:
        return f"{self.entity}_id"

    def same_definition(self, other: KnowledgeFeature) -> bool:
        """Equal apart from the retired flag."""
        return self.model_dump(exclude={"retired"}) == other.model_dump(exclude={"retired"})


def _parse(raw: Any, source: str) -> list[KnowledgeFeature]:
    entries = raw.get("features", raw) if isinstance(raw, Mapping) else raw
    if isinstance(entries, Mapping):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise FeatureStoreError(f"{source}: expected a feature mapping or a list of them")
    out = []
    for i, entry in enumerate(entries, 1):
        try:
            out.append(KnowledgeFeature.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "feature"
            raise FeatureStoreError(
                f"{source}: feature {i}: field {field!r}: {first['msg']}"
            ) from exc
    return out


def load_declarations(path: Path) -> list[KnowledgeFeature]:
    """Read one declaration or a list (top level or under ``features:``) from a YAML file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FeatureStoreError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise FeatureStoreError(f"{path}: not valid YAML: {exc}") from exc
    return _parse(raw, str(path))


def list_features(repo: Path, *, include_retired: bool = True) -> list[KnowledgeFeature]:
    """The declared features of a repo, by name then version."""
    entries = read_settings(repo).get("features", [])
    features = _parse(entries, f"{repo}/kar_repo.json") if entries else []
    features = [f for f in features if include_retired or not f.retired]
    return sorted(features, key=lambda f: (f.name, f.version))


def get_feature(repo: Path, name: str, version: int | None = None) -> KnowledgeFeature:
    """A declared feature; ``version`` None: the newest active version."""
    versions = [f for f in list_features(repo) if f.name == name]
    if not versions:
        raise FeatureStoreError(f"no knowledge feature {name!r} is declared in {repo}")
    if version is None:
        active = [f for f in versions if not f.retired]
        if not active:
            raise FeatureStoreError(f"every version of {name!r} in {repo} is retired")
        return active[-1]
    for feature in versions:
        if feature.version == version:
            return feature
    known = ", ".join(str(f.version) for f in versions)
    raise FeatureStoreError(f"{name!r} has no version {version} in {repo} (versions: {known})")


def _save(repo: Path, features: Iterable[KnowledgeFeature]) -> None:
    settings = read_settings(repo)
    ordered = sorted(features, key=lambda f: (f.name, f.version))
    settings["features"] = [f.model_dump() for f in ordered]
    write_settings(repo, settings)


def add_features(
    repo: Path, features: Iterable[KnowledgeFeature], *, apply: bool = True
) -> list[KnowledgeFeature]:
    """Declare feature versions and register them in Feast; returns the newly added ones.

    Re-adding an identical declaration is a no-op. A changed declaration under an existing
    (name, version) is refused: declare a new version instead, so a model trained on the
    old one keeps its vectors.
    """
    repo = Path(repo)
    definitions = repo / "knowledge_features.py"
    if definitions.is_file() and "DECLARED" not in definitions.read_text():
        raise FeatureStoreError(
            f"{definitions} predates declared features: copy kar's feature_repo/"
            "knowledge_features.py over it (the file has no kar.yaml-specific content)"
        )
    current = {(f.name, f.version): f for f in list_features(repo)}
    added = []
    for feature in features:
        old = current.get((feature.name, feature.version))
        if old is not None:
            if not old.same_definition(feature):
                newest = max(v for n, v in current if n == feature.name)
                raise FeatureStoreError(
                    f"{feature.name!r} version {feature.version} is already declared with a "
                    f"different definition; declare version {newest + 1} instead (versions "
                    "coexist until retired)"
                )
            if old.retired:
                raise FeatureStoreError(f"{feature.view} was retired; declare a new version")
            continue
        current[(feature.name, feature.version)] = feature
        added.append(feature)
    if added:
        _save(repo, current.values())
        (repo / "data").mkdir(exist_ok=True)
        for feature in added:
            (repo / "data" / feature.view).mkdir(exist_ok=True)
    if apply:
        apply_repo(repo)
    return added


def retire_feature(repo: Path, name: str, version: int) -> KnowledgeFeature:
    """Mark a version retired and remove its Feast objects (its Parquet parts are kept)."""
    from kar.features.repo import feature_store, load_definitions

    repo = Path(repo)
    feature = get_feature(repo, name, version)
    if feature.retired:
        return feature
    store = feature_store(repo)
    doomed = []
    for getter, obj_name in (
        (store.get_feature_service, f"{feature.view}_service"),
        (store.get_feature_view, feature.view),
    ):
        with contextlib.suppress(Exception):  # not registered: nothing to delete
            doomed.append(getter(obj_name))
    retired = feature.model_copy(update={"retired": True})
    others = [f for f in list_features(repo) if (f.name, f.version) != (name, version)]
    _save(repo, [*others, retired])
    try:
        store.apply(load_definitions(repo), objects_to_delete=doomed, partial=False)
    except Exception as exc:
        _save(repo, [*others, feature])
        raise FeatureStoreError(f"cannot remove {feature.view} from Feast: {exc}") from exc
    return retired


def describe_feature(repo: Path, name: str, version: int | None = None) -> dict[str, Any]:
    """The declaration plus the Feast objects registered for it."""
    from kar.features.repo import feature_store

    feature = get_feature(repo, name, version)
    info: dict[str, Any] = {"declaration": feature.model_dump(), "feast": {}}
    if feature.retired:
        return info
    store = feature_store(repo)
    try:
        view = store.get_feature_view(feature.view)
        service = store.get_feature_service(f"{feature.view}_service")
    except Exception as exc:
        raise FeatureStoreError(
            f"{feature.view} is declared but not registered in Feast ({exc}); "
            "run `kar features add` again or apply the repo"
        ) from exc
    info["feast"] = {
        "feature_view": view.name,
        "entities": list(view.entities),
        "features": [f"{f.name}: {f.dtype}" for f in view.features],
        "push_source": f"{feature.view}_push",
        "batch_source": view.batch_source.name,
        "feature_service": service.name,
        "ttl_seconds": int(view.ttl.total_seconds()) if view.ttl else 0,
        "tags": dict(view.tags),
    }
    return info


def publish_feature(
    repo: Path,
    name: str,
    vectors: Any,
    *,
    version: int | None = None,
    event_timestamp: Any = None,
    materialize: bool = True,
) -> Any:
    """Publish vectors (``<entity>_id`` or ``entity_id``, ``vector``) to one declared version.

    Validated like :func:`kar.features.publishing` (dimension, NaN/inf, duplicates) before
    anything is written; returns its :class:`PublishReport`.
    """
    from datetime import UTC, datetime

    from kar.data.schema import to_utc
    from kar.features.publishing import publish_frames
    from kar.features.vectors import prepare_vectors

    feature = get_feature(repo, name, version)
    if feature.retired:
        raise FeatureStoreError(f"{feature.view} is retired: publish to an active version")
    now = datetime.now(UTC)
    frame = prepare_vectors(
        vectors,
        kind=f"{feature.view} {feature.entity}",
        join_key=feature.join_key,
        feature=feature.name,
        dim=feature.dim,
        default_timestamp=to_utc(event_timestamp) if event_timestamp is not None else now,
        created=now,
    )
    defaulted = event_timestamp is None and "event_timestamp" not in vectors.columns
    report = publish_frames(Path(repo), {feature.view: frame}, materialize, defaulted_ts=defaulted)
    if feature.entity == "user":
        report.users = frame.height
    else:
        report.items = frame.height
    return report
