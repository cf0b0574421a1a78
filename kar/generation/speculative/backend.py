"""The transformers backend that decodes greedy requests speculatively: each step drafts
from the pool (:mod:`~kar.generation.speculative.drafts`) and checks the whole draft, a
chain or a tree, in one forward pass over the KV cache."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kar.errors import GenerationError
from kar.generation.backend import ChatMessages
from kar.generation.speculative.config import SpeculativeConfig, SpeculativeStats
from kar.generation.speculative.decode import (
    SpeculativeDecode,
    accept_path,
    compact_step_cache,
    tree_attention_mask,
)
from kar.generation.speculative.pool import KnowledgePool
from kar.generation.transformers_backend import Dtype, TransformersBackend
from kar.records import GenerationOutput, SamplingParams

# the decoding steps live in kar.generation.speculative.decode; re-exported here
__all__ = [
    "SpeculativeTransformersBackend",
    "accept_path",
    "compact_step_cache",
    "generation_prompt_tokens",
    "tree_attention_mask",
]

if TYPE_CHECKING:
    from kar.generation.store import KnowledgeStore
    from kar.project import GenerationSettings
    from kar.records import PromptRecord


class SpeculativeTransformersBackend(TransformersBackend):
    """:class:`TransformersBackend` that decodes greedy requests speculatively from ``pool``.

    Satisfies :class:`~kar.generation.backend.GenerationBackend`. In exact mode the
    ``model_name`` is the plain backend's (same output, same store key); in relaxed mode
    it gets :meth:`SpeculativeConfig.tag` appended. ``stats`` accumulates tokens/s, forward
    passes and the mean accepted draft length.
    """

    def __init__(
        self,
        pool: KnowledgePool | None = None,
        config: SpeculativeConfig | None = None,
        model: str | Path | None = None,
        dtype: Dtype = "auto",
        threads: int = 1,
        device: str = "cpu",
        model_name: str | None = None,
        cpu_kernels: bool = True,
    ) -> None:
        super().__init__(
            model=model,
            dtype=dtype,
            threads=threads,
            device=device,
            model_name=model_name,
            cpu_kernels=cpu_kernels,
        )
        self.config = config or SpeculativeConfig()
        if self.config.mode == "relaxed":
            self.model_name += self.config.tag()
        self.pool = pool
        self.pool_limit: int | None = None  # most earlier answers index_store adds per kind
        self.stats = SpeculativeStats()
        self.prefix_tokens = generation_prompt_tokens(self.tokenizer)

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> SpeculativeTransformersBackend:
        """The backend ``generation.speculative.mode: exact | relaxed`` configures, with an
        empty pool (:meth:`index_store` fills it)."""
        backend = cls(
            config=SpeculativeConfig.from_settings(gen.speculative),
            model=gen.model,
            dtype=gen.dtype,
            threads=gen.threads,
            cpu_kernels=gen.cpu_kernels,
        )
        backend.pool = backend.make_pool(exclude_own=gen.speculative.exclude_own_answer)
        backend.pool_limit = gen.speculative.pool_limit
        return backend

    def index_store(self, store: KnowledgeStore | None, prompts: Sequence[PromptRecord]) -> None:
        """Draft from ``store``'s plain greedy answers of this model (the scenarios of
        ``prompts``, at most ``pool_limit`` per kind) and route ``prompts`` to them."""
        if self.pool is None:
            self.pool = self.make_pool()
        if store is not None:
            plain = self.model_name.removesuffix(self.config.tag())
            for scenario in {p.scenario for p in prompts} or {None}:
                self.pool.add_store(store, scenario=scenario, model=plain, limit=self.pool_limit)
        self.pool.register(prompts)

    def __repr__(self) -> str:
        return f"SpeculativeTransformersBackend({self.model_name!r}, mode={self.config.mode!r})"

    def make_pool(self, **kwargs: object) -> KnowledgePool:
        """An empty :class:`KnowledgePool` using this model's tokenizer, prefix and EOS."""
        cfg = self.config
        kwargs.setdefault("min_n", cfg.min_n)
        kwargs.setdefault("max_n", cfg.max_n)
        return KnowledgePool(
            encode=lambda text: self.tokenizer.encode(text, add_special_tokens=False),
            prefix=self.prefix_tokens,
            eos=min(self.eos_token_ids),
            **kwargs,  # type: ignore[arg-type]
        )

    def generate(self, batch: list[ChatMessages], params: SamplingParams) -> list[GenerationOutput]:
        if not batch:
            return []
        if not params.greedy or self.config.drafts_per_row(len(batch)) == 0:
            return super().generate(batch, params)
        started = time.perf_counter()
        try:
            outputs = self._speculate(batch, params)
        except RuntimeError as exc:
            raise GenerationError(
                f"{self.model_name}: speculative generation failed: {exc}"
            ) from exc
        self.stats.seconds += time.perf_counter() - started
        return outputs

    # -- decoding --------------------------------------------------------------------------

    def _speculate(
        self, batch: list[ChatMessages], params: SamplingParams
    ) -> list[GenerationOutput]:
        return SpeculativeDecode(self, batch, params).run()


def generation_prompt_tokens(tokenizer: Any) -> list[int]:
    """Tokens the chat template puts before an answer (e.g. ``<|im_start|>assistant\\n``)."""
    msgs = [{"role": "user", "content": "x"}]
    with_prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    suffix = with_prompt[len(without) :] if with_prompt.startswith(without) else ""
    return tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
