"""The generation backend a project's ``kar.yaml`` asks for (``generation.backend``).

:data:`BACKENDS` maps each ``generation.backend`` name to its class (imported when chosen,
as Feast maps store types); every class builds itself from the settings with
``from_settings(gen)``. ``transformers`` (default; speculative from the knowledge pool when
``generation.speculative.mode`` is not ``off``), ``vllm`` (offline engine), ``openai`` (any
OpenAI-compatible server) or ``ray`` (vLLM engines on a Ray cluster through Ray Data).
:func:`backend_model_name` gives the store's model id without loading anything, so a rerun
with nothing to do loads no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

from kar.errors import ConfigError
from kar.generation.model_files import model_name_for

if TYPE_CHECKING:
    from kar.generation.backend import GenerationBackend
    from kar.generation.store import KnowledgeStore
    from kar.project import GenerationSettings
    from kar.records import PromptRecord

BACKENDS: dict[str, str] = {
    "transformers": "kar.generation.transformers_backend.TransformersBackend",
    "vllm": "kar.generation.vllm_backend.VLLMBackend",
    "openai": "kar.generation.openai_backend.OpenAIBackend",
    "ray": "kar.generation.ray_backend.RayBackend",
}
SPECULATIVE_BACKEND = "kar.generation.speculative.SpeculativeTransformersBackend"


class BackendClass(Protocol):
    """What :data:`BACKENDS` names: a class that builds itself from kar.yaml's settings."""

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> GenerationBackend: ...


def backend_class(gen: GenerationSettings) -> BackendClass:
    """The class of the backend ``gen`` asks for (its module imported now, nothing loaded)."""
    if gen.backend == "transformers" and gen.speculative.mode != "off":
        path = SPECULATIVE_BACKEND
    else:
        path = BACKENDS[gen.backend]  # the settings' Literal admits only these names
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)


def backend_model_name(gen: GenerationSettings) -> str:
    """The model id answers of this configuration are stored under."""
    if gen.backend == "openai":
        if not gen.openai.model:
            raise ConfigError("generation.openai.model: the server's model name is required")
        return f"openai:{gen.openai.model}"
    name = model_name_for(gen.model, gen.dtype)
    if gen.backend == "transformers" and gen.speculative.mode == "relaxed":
        from kar.generation.speculative import SpeculativeConfig

        name += SpeculativeConfig.from_settings(gen.speculative).tag()
    return name


def make_backend(
    gen: GenerationSettings,
    *,
    store: KnowledgeStore | None = None,
    prompts: Sequence[PromptRecord] = (),
) -> GenerationBackend:
    """Load the configured backend. Speculative decoding indexes ``store``'s earlier
    answers (plain greedy ones of the same model) and routes ``prompts`` to their pool."""
    backend = backend_class(gen).from_settings(gen)
    index_store = getattr(backend, "index_store", None)  # the speculative backend's pool
    if index_store is not None:
        index_store(store, prompts)
    return backend
