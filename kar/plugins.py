"""kar's plugin points, the way Feast's are: per plugin kind, a name -> dotted class path map
that also accepts a dotted path of your own class (``my_pkg.module.MyBackend``).

kar.yaml's allowed names come from these maps (:mod:`kar.project` validates with them), and
nothing is imported until an entry is used, so this module stays light:

- :data:`BACKENDS` (``generation.backend``): a class with ``from_settings(gen)``
  (:class:`BackendClass`); ``auto`` chooses one of them (:mod:`kar.generation.factory`);
- :data:`DATASET_KINDS` (``dataset.kind``): a callable ``loader(project) -> Dataset``
  (:class:`DatasetLoader`);
- :data:`BACKBONES` (``training.backbone``): a :class:`kar.models.base.CTRModel` subclass with
  its ``config_class`` (:class:`BackboneClass`). A new backbone is one file and one line here;
- :data:`ARTIFACTS` (a saved artifact's ``kind``): a class with ``KIND``, ``save(path)`` and
  ``load(path)`` (:class:`kar.artifacts.Artifact`): what a manifest's ``kind`` names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kar.artifacts import Artifact
from kar.errors import ConfigError

if TYPE_CHECKING:
    from kar.data.schema import Dataset
    from kar.generation.backend import GenerationBackend
    from kar.project import GenerationSettings, ProjectFolder


@runtime_checkable
class BackendClass(Protocol):
    """generation.backend: a class with from_settings(gen) building the backend."""

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> GenerationBackend: ...


@runtime_checkable
class DatasetLoader(Protocol):
    """dataset.kind: a callable loader(project) -> Dataset."""

    def __call__(self, project: ProjectFolder) -> Dataset: ...


@runtime_checkable
class BackboneClass(Protocol):
    """training.backbone: a CTRModel subclass with config_class."""

    config_class: type

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def is_dotted(value: str) -> bool:
    """Whether ``value`` names a class by its dotted path rather than by a registered name."""
    module, _, name = value.rpartition(".")
    return bool(module) and bool(name)


class Registry(Mapping[str, str]):
    """``name -> "module.Attribute"`` for one plugin kind; any other value with a dot is
    taken as a dotted path. ``field`` is the kar.yaml field errors name, ``what`` the noun;
    ``extra`` are names handled by the caller (e.g. ``auto``); ``protocol`` is what a loaded
    entry must be."""

    def __init__(
        self,
        field: str,
        what: str,
        entries: dict[str, str],
        protocol: type,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.field = field
        self.what = what
        self.entries = dict(entries)
        self.protocol = protocol
        self.extra = extra

    def __getitem__(self, name: str) -> str:
        return self.entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        """Every name kar.yaml accepts (the caller's extra names first)."""
        return [*self.extra, *self.entries]

    def describe(self) -> str:
        """The accepted values, for descriptions and error messages."""
        return " | ".join(self.names()) + ", or a dotted class path (my_pkg.module.Name)"

    def canonical(self, value: str) -> str:
        """A registered name in lower case (names are case-insensitive); paths as given."""
        return value.lower() if value.lower() in self.names() else value

    def check(self, value: str) -> str:
        """A kar.yaml value, checked: a name, or a dotted path that imports to an entry of
        the right kind (raises ``ValueError``, which pydantic turns into a field error)."""
        name = self.canonical(value)
        if name in self.names():
            return name
        if not is_dotted(value):
            raise ValueError(f"unknown {self.what} {value!r}; expected {self.describe()}")
        try:
            self.load(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix(f"{self.field}: ")) from None
        return value

    def load(self, value: str) -> Any:
        """The class (or callable) ``value`` names, imported now; :class:`ConfigError` (one
        line, naming the field) when it cannot be imported or is not of this kind."""
        path = self.entries.get(self.canonical(value), value)
        module, _, name = path.rpartition(".")
        try:
            loaded = getattr(import_module(module), name)
        except Exception as exc:  # noqa: BLE001 - a plugin module may fail any way on import
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{self.field}: cannot import {path!r}: {reason}") from None
        if not isinstance(loaded, self.protocol):
            raise ConfigError(
                f"{self.field}: {path!r} is not a {self.protocol.__name__} "
                f"({(self.protocol.__doc__ or '').strip().splitlines()[0]})"
            )
        return loaded


BACKENDS = Registry(
    "generation.backend",
    "backend",
    {
        "transformers": "kar.generation.transformers_backend.TransformersBackend",
        "vllm": "kar.generation.vllm_backend.VLLMBackend",
        "openai": "kar.generation.openai_backend.OpenAIBackend",
        "ray": "kar.generation.ray_backend.RayBackend",
    },
    BackendClass,
    extra=("auto",),
)
DATASET_KINDS = Registry(
    "dataset.kind",
    "dataset kind",
    {
        "demo": "kar.data.kinds.load_demo_kind",
        "movielens": "kar.data.kinds.load_movielens_kind",
        "table": "kar.data.kinds.load_table_kind",
    },
    DatasetLoader,
)
BACKBONES = Registry(
    "training.backbone",
    "backbone",
    {
        "deepfm": "kar.models.deepfm.DeepFM",
        "din": "kar.models.din.DIN",
        "dcnv2": "kar.models.dcnv2.DCNv2",
        "autoint": "kar.models.autoint.AutoInt",
        "xdeepfm": "kar.models.xdeepfm.XDeepFM",
        "fibinet": "kar.models.fibinet.FiBiNet",
        "dien": "kar.models.dien.DIEN",
    },
    BackboneClass,
)
ARTIFACTS = Registry(
    "kind",
    "artifact kind",
    {
        "encoded_vectors": "kar.encoding.vectors.EntityVectors",
        "trained_adaptor": "kar.adaptor.trained.TrainedAdaptor",
        "knowledge_codebooks": "kar.adaptor.codes.KnowledgeCodebooks",
        "user_tower": "kar.embedding.tower.UserTower",
    },
    Artifact,
)
