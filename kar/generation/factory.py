"""The generation backend a project's ``kar.yaml`` asks for (``generation.backend``).

``transformers`` (default; optionally speculative from the knowledge pool), ``vllm``
(offline engine) or ``openai`` (any OpenAI-compatible server). :func:`backend_model_name`
gives the store's model id without loading anything, so a rerun with nothing to do loads
no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kar.errors import ConfigError
from kar.generation.model_files import model_name_for

if TYPE_CHECKING:
    from kar.generation.backend import GenerationBackend
    from kar.generation.store import KnowledgeStore
    from kar.project import GenerationSettings
    from kar.records import PromptRecord


def backend_model_name(gen: GenerationSettings) -> str:
    """The model id answers of this configuration are stored under."""
    if gen.backend == "openai":
        if not gen.openai.model:
            raise ConfigError("generation.openai.model: the server's model name is required")
        return f"openai:{gen.openai.model}"
    name = model_name_for(gen.model, gen.dtype)
    if gen.backend == "transformers" and gen.speculative.mode == "relaxed":
        from kar.generation.speculative import SpeculativeConfig

        name += _speculative_config(gen, SpeculativeConfig).tag()
    return name


def _speculative_config(gen: GenerationSettings, config_type: Any) -> Any:
    spec = gen.speculative
    return config_type(
        mode=spec.mode,
        draft_tokens=spec.draft_tokens,
        draft_tree=spec.draft_tree,
        min_support=spec.min_support,
        top_k=spec.top_k,
        min_prob=spec.min_prob,
        step_token_budget=spec.step_token_budget,
        min_first_support=spec.min_first_support,
    )


def make_backend(
    gen: GenerationSettings,
    *,
    store: KnowledgeStore | None = None,
    prompts: Sequence[PromptRecord] = (),
) -> GenerationBackend:
    """Load the configured backend. Speculative decoding indexes ``store``'s earlier
    answers (plain greedy ones of the same model) and routes ``prompts`` to their pool."""
    if gen.backend == "openai":
        from kar.generation.openai_backend import OpenAIBackend

        o = gen.openai
        return OpenAIBackend(
            model=o.model or "",
            base_url=o.base_url,
            api_key_env=o.api_key_env,
            max_concurrency=o.max_concurrency,
            timeout_s=o.timeout_s,
            max_retries=o.max_retries,
            vllm_extras=o.vllm_extras,
        )
    if gen.backend == "vllm":
        from kar.generation.vllm_backend import VLLMBackend

        v = gen.vllm
        return VLLMBackend(
            model=gen.model,
            dtype=gen.dtype,
            speculative=v.speculative,
            enforce_eager=v.enforce_eager,
            cpu_kv_cache_gb=v.cpu_kv_cache_gb,
            **v.engine,
        )
    if gen.speculative.mode == "off":
        from kar.generation.transformers_backend import TransformersBackend

        return TransformersBackend(
            model=gen.model, dtype=gen.dtype, threads=gen.threads, cpu_kernels=gen.cpu_kernels
        )
    from kar.generation.speculative import SpeculativeConfig, SpeculativeTransformersBackend

    backend = SpeculativeTransformersBackend(
        config=_speculative_config(gen, SpeculativeConfig),
        model=gen.model,
        dtype=gen.dtype,
        threads=gen.threads,
        cpu_kernels=gen.cpu_kernels,
    )
    pool = backend.make_pool(exclude_own=gen.speculative.exclude_own_answer)
    if store is not None:
        scenarios = {p.scenario for p in prompts} or {None}
        plain = model_name_for(gen.model, gen.dtype)
        for scenario in scenarios:
            pool.add_store(store, scenario=scenario, model=plain, limit=gen.speculative.pool_limit)
    pool.register(prompts)
    if gen.speculative.neighbours == "prompts":
        pool.use_text_neighbours(prompts, k=gen.speculative.neighbours_k)
    backend.pool = pool
    return backend
