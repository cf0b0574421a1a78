"""Records that flow between stages: prompts -> generation -> encoding.

Kept in one small module so that no stage imports another stage's internals.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

EntityType = Literal["user", "item"]
# Knowledge kinds, as KAR names them: reasoning about a user's preferences, facts about an item.
KIND_USER = "user_preference"
KIND_ITEM = "item_fact"


def stable_hash(obj: object, length: int = 16) -> str:
    """Hex sha256 of a JSON-serialisable object with sorted keys (truncated)."""
    payload = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


@dataclass(frozen=True)
class PromptRecord:
    """One question to the LLM about one user or one item."""

    entity_type: EntityType
    entity_id: str
    kind: str  # KIND_USER or KIND_ITEM
    scenario: str
    prompt_version: str  # hash of the scenario's template + factors
    messages: tuple[dict[str, str], ...]  # chat messages: {"role": ..., "content": ...}
    as_of: datetime | None = None  # user prompts: history strictly before this instant
    context_text: str = ""  # what the encoder sees besides the answer (user: the history)

    @property
    def prompt_hash(self) -> str:
        """Identity of the exact question asked (messages), for the knowledge store key."""
        return stable_hash([dict(m) for m in self.messages], length=32)


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings; part of the knowledge store key."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.2
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def key(self) -> str:
        return stable_hash(self.__dict__, length=16)


@dataclass
class GenerationOutput:
    """What a backend returns for one prompt."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    # stop: the model ended; length: hit max_new_tokens; trimmed: hit it, then cut back to
    # the last complete sentence (kar.generation.quality.trim_to_sentence)
    finish_reason: Literal["stop", "length", "trimmed"]
    meta: dict[str, object] = field(default_factory=dict)
