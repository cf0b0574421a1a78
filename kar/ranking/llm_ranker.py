"""The LLM ranker: P(yes) for "will the user like <target>? Answer yes or no".

The score is ReLLa's: a softmax over the logits of the answer tokens at the answer position
(the first token the assistant writes), restricted to the yes and no spellings (``yes``,
``Yes``, ``YES``, each with and without a leading space, whichever are single tokens), the
yes ones summed. Two scorers share :class:`YesNoScorer`: :class:`TransformersRanker` (a local
causal LM, the bundled SmolLM2 by default: left-padded batches, one forward pass, the last
position's logits only) and :class:`OpenAIRanker` (any OpenAI-compatible server that returns
``logprobs``, such as ``vllm serve``: the first token's top log-probabilities).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kar.errors import ConfigError, GenerationError
from kar.generation.openai_backend import OpenAIBackend
from kar.records import GenerationOutput, SamplingParams

if TYPE_CHECKING:
    from kar.generation.backend import ChatMessages
    from kar.generation.transformers_backend import Dtype
    from kar.project import GenerationSettings

YES_WORDS = ("yes", "Yes", "YES")
NO_WORDS = ("no", "No", "NO")


class YesNoScorer(Protocol):
    """Scores prompts that ask a yes / no question: P(yes) per prompt."""

    name: str  # the model, for reports

    def score(self, prompts: Sequence[str]) -> np.ndarray: ...


def answer_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Token ids of ``words`` written as one token, with and without a leading space."""
    ids = set()
    for word in words:
        for text in (word, f" {word}"):
            tokens = tokenizer.encode(text, add_special_tokens=False)
            if len(tokens) == 1:
                ids.add(int(tokens[0]))
    if not ids:
        raise ConfigError(f"the tokenizer writes none of {list(words)} as a single token")
    return sorted(ids)


def _logsumexp(values: np.ndarray) -> np.ndarray:
    """log(sum(exp(values))) over the last axis, stable; -inf for an empty or all -inf row."""
    if values.shape[-1] == 0:
        return np.full(values.shape[:-1], -np.inf)
    top = np.max(values, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (top + np.log(np.sum(np.exp(values - top), axis=-1, keepdims=True)))[..., 0]


def yes_probability(yes: np.ndarray, no: np.ndarray) -> np.ndarray:
    """Softmax over the yes and no answers' logits (or log-probabilities), (n, a) each,
    the yes ones summed: ``sigmoid(logsumexp(yes) - logsumexp(no))``; 0.5 when neither."""
    y = _logsumexp(np.asarray(yes, dtype=np.float64))
    n = _logsumexp(np.asarray(no, dtype=np.float64))
    with np.errstate(invalid="ignore"):  # -inf - -inf: neither answer, 0.5
        gap = np.nan_to_num(y - n, nan=0.0, posinf=700.0, neginf=-700.0)
    return 1.0 / (1.0 + np.exp(-gap))


class TransformersRanker:
    """P(yes) from a local causal chat LM (``model``: None / ``"smollm2"`` for the bundled
    SmolLM2-135M-Instruct, or a local HF folder). The prompt goes in as the user's message of
    the model's chat template; ``batch_size`` prompts, sorted by length, per forward pass."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: Dtype = "auto",
        threads: int = 1,
        device: str = "cpu",
        batch_size: int = 8,
        cpu_kernels: bool = True,
    ) -> None:
        from kar.generation.transformers_backend import TransformersBackend

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = TransformersBackend(
            model,
            dtype=dtype,
            threads=threads,
            device=device,
            cpu_kernels=cpu_kernels,  # type: ignore[arg-type]
        )
        self.name = self.backend.model_name
        self.batch_size = batch_size
        self.yes_ids = answer_token_ids(self.backend.tokenizer, YES_WORDS)
        self.no_ids = answer_token_ids(self.backend.tokenizer, NO_WORDS)
        self.prompt_tokens = 0  # tokens read so far (the cost)

    @classmethod
    def from_settings(cls, gen: GenerationSettings, batch_size: int = 8) -> TransformersRanker:
        """The model, dtype, threads and kernels of kar.yaml's ``generation`` section."""
        return cls(gen.model, dtype=gen.dtype, threads=gen.threads, batch_size=batch_size,
                   cpu_kernels=gen.cpu_kernels)  # fmt: skip

    def render(self, prompt: str) -> str:
        """The exact text the model reads: chat template, then the assistant's turn."""
        return self.backend.render([{"role": "user", "content": prompt}])

    def answer_logits(self, texts: Sequence[str]) -> np.ndarray:
        """(n, vocab) float32 logits at the answer position of rendered ``texts`` (one
        left-padded batch; positions count from each text's first real token)."""
        import torch

        enc = self.backend.tokenizer(
            list(texts), return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.backend.device)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.backend.model(
                input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                logits_to_keep=1,
            )  # fmt: skip
        return out.logits[:, -1, :].float().cpu().numpy()

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """P(yes) per prompt, in the order given."""
        texts = [self.render(p) for p in prompts]
        lengths = [
            len(ids) for ids in self.backend.tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]
        self.prompt_tokens += sum(lengths)
        order = np.argsort(lengths, kind="stable")
        out = np.zeros(len(texts), dtype=np.float64)
        for first in range(0, len(order), self.batch_size):
            rows = order[first : first + self.batch_size]
            logits = self.answer_logits([texts[i] for i in rows])
            out[rows] = yes_probability(logits[:, self.yes_ids], logits[:, self.no_ids])
        return out


class LogprobChat(OpenAIBackend):
    """:class:`OpenAIBackend` asking for the first answer token's ``top_logprobs`` (OpenAI's
    and vLLM's ``logprobs`` fields); each output's ``meta["top_logprobs"]`` maps token text
    to log-probability."""

    top_logprobs: int = 20

    def payload(self, messages: ChatMessages, params: SamplingParams) -> dict[str, Any]:
        return {**super().payload(messages, params), "logprobs": True,
                "top_logprobs": self.top_logprobs}  # fmt: skip

    def _parse(self, raw: bytes) -> GenerationOutput:
        out = super()._parse(raw)
        try:
            content = (json.loads(raw)["choices"][0].get("logprobs") or {}).get("content") or []
            top = content[0]["top_logprobs"] if content else []
            out.meta["top_logprobs"] = {str(t["token"]): float(t["logprob"]) for t in top}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GenerationError(
                f"{self.model_name}: no usable logprobs in the response ({exc!r}); does the "
                "server return logprobs?"
            ) from exc
        if not out.meta["top_logprobs"]:
            raise GenerationError(f"{self.model_name}: the response carries no top_logprobs")
        return out


def logprob_yes_probability(top: Mapping[str, float]) -> float:
    """P(yes) from one answer token's top log-probabilities: the yes and no spellings
    listed (a token's text stripped), softmax as :func:`yes_probability`. A side absent from
    the list gets the smallest listed log-probability (the most it can have)."""
    floor = min(top.values()) if top else -math.inf
    yes = [lp for tok, lp in top.items() if tok.strip() in YES_WORDS] or [floor]
    no = [lp for tok, lp in top.items() if tok.strip() in NO_WORDS] or [floor]
    return float(yes_probability(np.array([yes]), np.array([no]))[0])


class OpenAIRanker:
    """P(yes) from an OpenAI-compatible server (kar.yaml's ``generation.openai``): one
    greedy answer token per prompt, scored from its top log-probabilities."""

    def __init__(self, chat: LogprobChat) -> None:
        self.chat = chat
        self.name = chat.model_name
        self.prompt_tokens = 0

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> OpenAIRanker:
        """The server of kar.yaml's ``generation.openai`` section."""
        return cls(LogprobChat.from_settings(gen))

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """P(yes) per prompt, in the order given."""
        params = SamplingParams(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0)
        outputs = self.chat.generate([[{"role": "user", "content": p}] for p in prompts], params)
        self.prompt_tokens += sum(o.prompt_tokens for o in outputs)
        return np.array([logprob_yes_probability(o.meta["top_logprobs"]) for o in outputs])  # type: ignore[arg-type]


def make_scorer(gen: GenerationSettings, backend: str, batch_size: int = 8) -> YesNoScorer:
    """The ranker ``backend`` names, configured by kar.yaml's ``generation`` section:
    ``transformers`` (``generation.model``) or ``openai`` (``generation.openai``)."""
    if backend == "transformers":
        return TransformersRanker.from_settings(gen, batch_size=batch_size)
    if backend == "openai":
        return OpenAIRanker.from_settings(gen)
    raise ConfigError(f"ranker backend {backend!r}: expected transformers or openai")
