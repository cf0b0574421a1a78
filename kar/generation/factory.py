"""The generation backend a project's ``kar.yaml`` asks for (``generation.backend``).

:data:`BACKENDS` (:mod:`kar.plugins`) maps each name to its class's dotted path (imported
when chosen, as Feast maps store types); any other value with a dot is the dotted path of
your own class. Every class builds itself from the settings with ``from_settings(gen)``.
``auto`` (the default) picks vLLM when it imports and enough prompts wait to pay for its
engine start, else transformers (:func:`choose_backend`); ``transformers`` (speculative from
the knowledge pool when ``generation.speculative.mode`` is not ``off``), ``vllm`` (offline
engine), ``openai`` (any OpenAI-compatible server), ``ray`` (vLLM engines on a Ray cluster).
:func:`backend_model_name` gives the store's model id without loading anything, so a rerun
with nothing to do loads no model; vLLM and transformers share it, so ``auto`` switching
engines never asks a question twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from kar.errors import ConfigError
from kar.generation import vllm_backend
from kar.generation.backend import IndexesStore, ModelIdFromSettings
from kar.generation.model_files import model_name_for
from kar.plugins import BACKENDS, BackendClass, Registry

if TYPE_CHECKING:
    from kar.generation.backend import GenerationBackend
    from kar.generation.store import KnowledgeStore
    from kar.project import GenerationSettings
    from kar.records import PromptRecord

__all__ = [
    "AUTO",
    "BACKENDS",
    "BackendChoice",
    "BackendClass",
    "backend_class",
    "backend_model_name",
    "choose_backend",
    "make_backend",
]

log = logging.getLogger(__name__)
AUTO = "auto"
SPECULATIVE = Registry(
    "generation.speculative.mode",
    "speculative backend",
    {"transformers": "kar.generation.speculative.SpeculativeTransformersBackend"},
    BackendClass,
)


class BackendChoice(NamedTuple):
    """The backend that runs (a registered name or a dotted path) and why."""

    name: str
    reason: str

    def line(self) -> str:
        return f"generation.backend auto: {self.name} ({self.reason})"


def choose_backend(gen: GenerationSettings, pending: int | None = None) -> BackendChoice:
    """``generation.backend`` itself, or what ``auto`` picks for ``pending`` unanswered
    prompts (None: not known, counted as many): transformers when speculative decoding is
    on (it runs there), when vLLM does not import, or when fewer than
    ``generation.auto_min_prompts`` wait (vLLM's engine start would cost more); else vLLM."""
    if gen.backend != AUTO:
        return BackendChoice(gen.backend, "kar.yaml")
    if gen.speculative.mode != "off":
        return BackendChoice("transformers", f"speculative.mode {gen.speculative.mode}")
    if not vllm_backend.vllm_available():
        return BackendChoice("transformers", "vLLM is not installed")
    if pending is not None and pending < gen.auto_min_prompts:
        return BackendChoice(
            "transformers",
            f"{pending} prompts to answer < auto_min_prompts {gen.auto_min_prompts}: "
            "vLLM's engine start would cost more",
        )
    counted = "" if pending is None else f"; {pending} prompts to answer"
    return BackendChoice("vllm", f"vLLM imports{counted}")


def backend_class(gen: GenerationSettings, pending: int | None = None) -> BackendClass:
    """The class of the backend ``gen`` asks for (its module imported now, nothing loaded);
    ``pending``: the unanswered prompts ``auto`` decides by."""
    name = choose_backend(gen, pending).name
    if name == "transformers" and gen.speculative.mode != "off":
        return SPECULATIVE.load("transformers")
    return BACKENDS.load(name)


def backend_model_name(gen: GenerationSettings) -> str:
    """The model id answers of this configuration are stored under (whichever engine
    ``auto`` picks: vLLM and transformers share it)."""
    backend = "transformers" if gen.backend == AUTO else gen.backend
    if backend == "openai":
        if not gen.openai.model:
            raise ConfigError("generation.openai.model: the server's model name is required")
        return f"openai:{gen.openai.model}"
    if backend not in BACKENDS:
        return plugin_model_name(gen)
    name = model_name_for(gen.model, gen.dtype)
    if backend == "transformers" and gen.speculative.mode == "relaxed":
        from kar.generation.speculative import SpeculativeConfig

        name += SpeculativeConfig.from_settings(gen.speculative).tag()
    return name


def plugin_model_name(gen: GenerationSettings) -> str:
    """A backend class of your own: its ``settings_model_name(gen)`` when it declares one
    (:class:`~kar.generation.backend.ModelIdFromSettings`), else its dotted path + the model."""
    cls = BACKENDS.load(gen.backend)
    if isinstance(cls, ModelIdFromSettings):
        return cls.settings_model_name(gen)
    return f"{gen.backend}:{model_name_for(gen.model, gen.dtype)}"


def make_backend(
    gen: GenerationSettings,
    *,
    store: KnowledgeStore | None = None,
    prompts: Sequence[PromptRecord] = (),
    pending: int | None = None,
    announce: Callable[[str], None] = log.info,
) -> GenerationBackend:
    """Load the configured backend (``auto``: chosen for ``pending`` unanswered prompts, the
    choice said through ``announce``). A backend that indexes the store (speculative
    decoding's pool) reads ``store``'s earlier answers, routed to ``prompts``."""
    if gen.backend == AUTO:
        announce(choose_backend(gen, pending).line())
    backend = backend_class(gen, pending).from_settings(gen)
    if isinstance(backend, IndexesStore):
        backend.index_store(store, prompts)
    return backend
