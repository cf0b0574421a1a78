"""The one protocol every LLM backend implements (transformers, vLLM, OpenAI-compatible)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from kar.records import GenerationOutput, SamplingParams

ChatMessages = Sequence[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": ...}]


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
