"""The configured backend, loaded only when there is something to answer.

:class:`LazyBackend` is what ``kar generate`` hands the runner: its ``model_name`` (the store
key) is known from the settings alone, so a rerun with nothing to do loads no LLM. It is a
declared :class:`~kar.generation.backend.StreamingBackend`: the runner gives it the to-do
list, it loads the backend then (``generation.backend: auto`` decides by how many prompts are
still unanswered, of every kind) and streams that backend's job, or answers batch by batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kar.generation.backend import StreamingBackend, TruncatedPolicy
from kar.generation.factory import backend_model_name, make_backend
from kar.generation.runner import answer_in_batches

if TYPE_CHECKING:
    from kar.generation.backend import ChatMessages, GenerationBackend
    from kar.generation.runner import GenerationReport
    from kar.generation.store import KnowledgeStore
    from kar.project import GenerationSettings
    from kar.records import GenerationOutput, PromptRecord, SamplingParams

log = logging.getLogger(__name__)


class LazyBackend:
    """Loads the backend ``gen`` configures on the first job (see the module docstring).

    ``store`` / ``prompts``: the knowledge store and every prompt of the run (a speculative
    backend indexes the store for them); ``params``: each knowledge kind's sampling, so
    ``auto`` counts the other kinds' unanswered prompts too; ``batch_size``: prompts per call
    of a backend that does not stream (None: ``gen.batch_size``); ``progress``: also print
    ``auto``'s choice on stderr (it is always logged).
    """

    def __init__(
        self,
        gen: GenerationSettings,
        store: KnowledgeStore | None = None,
        prompts: Sequence[PromptRecord] = (),
        *,
        params: Mapping[str, SamplingParams] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> None:
        self.gen = gen
        self.store = store
        self.prompts = list(prompts)
        self.params = dict(params or {})
        self.batch_size = batch_size or gen.batch_size
        self.progress = progress
        self.backend: GenerationBackend | None = None

    @property
    def model_name(self) -> str:
        """The store's model id, from the settings (nothing loaded)."""
        return backend_model_name(self.gen)

    def say(self, line: str) -> None:
        """Log ``line`` (and print it on stderr with ``progress``)."""
        log.info(line)
        if self.progress:
            from rich.console import Console

            Console(stderr=True).print(line, markup=False, highlight=False, soft_wrap=True)

    def unanswered(self, pending: Sequence[PromptRecord]) -> int:
        """``pending`` plus the run's prompts of the other kinds not answered yet."""
        count = len(pending)
        kinds = {p.kind for p in pending}
        for kind, params in self.params.items():
            todo = [p for p in self.prompts if p.kind == kind]
            if kind in kinds or not todo or self.store is None:
                continue
            count += len(todo) - len(self.store.done_keys(todo, self.model_name, params.key()))
        return count

    def load(self, pending: int | None = None) -> GenerationBackend:
        """The backend, loaded now if not yet (``pending``: the unanswered prompts)."""
        if self.backend is None:
            self.backend = make_backend(
                self.gen, store=self.store, prompts=self.prompts, pending=pending,
                announce=self.say,
            )  # fmt: skip
        return self.backend

    def generate(self, batch: list[ChatMessages], params: SamplingParams) -> list[GenerationOutput]:
        return self.load(len(batch)).generate(batch, params)

    def answer_stream(
        self,
        prompts: Sequence[PromptRecord],
        params: SamplingParams,
        *,
        max_retries: int,
        truncated: TruncatedPolicy,
        report: GenerationReport,
    ) -> Iterator[list[dict[str, Any]]]:
        """Load the backend for this to-do list, then its own job (a streaming backend) or
        one batch after another, stored under :attr:`model_name`."""
        backend = self.load(self.unanswered(prompts))
        if isinstance(backend, StreamingBackend):
            yield from backend.answer_stream(
                prompts, params, max_retries=max_retries, truncated=truncated, report=report
            )
            return
        yield from answer_in_batches(
            prompts, self, params, self.batch_size, max_retries, truncated, report
        )
