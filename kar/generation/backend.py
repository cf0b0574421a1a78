"""The protocol every LLM backend implements, and the optional capabilities a backend
declares (each checked with ``isinstance`` in one place: the runner for streaming, the
factory for the knowledge-pool index).

- :class:`GenerationBackend`: ``model_name`` + ``generate(batch, params)`` (every backend);
- :class:`StreamingBackend`: ``answer_stream(...)`` takes a whole to-do list as one job and
  yields store rows as parts finish (the vLLM and Ray backends;
  :class:`kar.generation.lazy.LazyBackend`);
- :class:`IndexesStore`: ``index_store(store, prompts)`` reads earlier answers before the
  first call (the speculative backend's draft pool);
- :class:`ModelIdFromSettings` (a class of your own): ``settings_model_name(gen)``, the store's
  model id before anything loads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from kar.records import GenerationOutput, PromptRecord, SamplingParams

if TYPE_CHECKING:
    from kar.generation.runner import GenerationReport
    from kar.generation.store import KnowledgeStore
    from kar.project import GenerationSettings

ChatMessages = Sequence[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": ...}]
TruncatedPolicy = Literal["trim", "retry", "accept"]


@runtime_checkable
class GenerationBackend(Protocol):
    """Answers a batch of chat conversations.

    ``model_name`` is a stable id of the model *and* anything that changes its output
    (e.g. dtype); it is part of the knowledge store key. ``generate`` returns exactly one
    :class:`GenerationOutput` per conversation, in order, and raises on failure (the
    runner then saves nothing for that batch).
    """

    model_name: str

    def generate(
        self, batch: list[ChatMessages], params: SamplingParams
    ) -> list[GenerationOutput]: ...


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that answers a whole to-do list as one job (e.g. a Ray Dataset), with the
    same quality checks and retries as :func:`kar.generation.runner.generate_knowledge`, and
    yields the store rows (built with :func:`kar.generation.runner.store_rows`) as parts of
    it finish; the runner saves each at once."""

    model_name: str

    def answer_stream(
        self,
        prompts: Sequence[PromptRecord],
        params: SamplingParams,
        *,
        max_retries: int,
        truncated: TruncatedPolicy,
        report: GenerationReport,
    ) -> Iterator[list[dict[str, Any]]]: ...


@runtime_checkable
class IndexesStore(Protocol):
    """A backend that reads the knowledge store's earlier answers before it generates
    (the speculative backend's draft pool), routed to the prompts it will be asked."""

    def index_store(
        self, store: KnowledgeStore | None, prompts: Sequence[PromptRecord]
    ) -> None: ...


@runtime_checkable
class ModelIdFromSettings(Protocol):
    """A backend class (your own, by dotted path) that says the model id its answers are
    stored under from kar.yaml's settings, without loading anything."""

    @classmethod
    def settings_model_name(cls, gen: GenerationSettings) -> str: ...
