"""kar.yaml's ``generation.backend`` / ``speculative`` select the backend and its store id."""

from __future__ import annotations

import pytest

from kar.errors import ConfigError
from kar.generation import KnowledgeStore
from kar.generation.factory import backend_model_name, make_backend
from kar.project import GenerationSettings, ProjectSettings
from kar.records import KIND_ITEM, PromptRecord


def settings(**generation: object) -> GenerationSettings:
    return ProjectSettings.model_validate({"generation": generation}).generation


def test_openai_backend_from_settings_and_its_store_id() -> None:
    from kar.generation.openai_backend import OpenAIBackend

    server = {"model": "smollm2", "base_url": "http://h:1/v1", "api_key_env": "KAR_KEY",
              "max_concurrency": 3}  # fmt: skip
    gen = settings(backend="openai", openai=server)
    backend = make_backend(gen)
    assert isinstance(backend, OpenAIBackend)
    assert backend.url == "http://h:1/v1/chat/completions" and backend.max_concurrency == 3
    assert backend.model_name == backend_model_name(gen) == "openai:smollm2"
    with pytest.raises(ConfigError, match="generation.openai.model"):
        backend_model_name(settings(backend="openai"))


def test_bad_settings_name_the_field(tmp_path) -> None:
    from kar.project import Project

    (tmp_path / "kar.yaml").write_text("generation:\n  backend: tgi\n")
    with pytest.raises(ConfigError, match="generation.backend"):
        Project.load(tmp_path)


def test_store_ids() -> None:
    assert backend_model_name(settings()) == "smollm2-135m-instruct@bfloat16"
    assert backend_model_name(settings(backend="vllm", dtype="float32")) == (
        "smollm2-135m-instruct@float32"
    )
    exact = settings(speculative={"mode": "exact"})
    assert backend_model_name(exact) == "smollm2-135m-instruct@bfloat16"  # same output
    relaxed = settings(speculative={"mode": "relaxed", "top_k": 5, "min_prob": 0.05})
    assert backend_model_name(relaxed) == "smollm2-135m-instruct@bfloat16+spec-relaxed(k=5,p=0.05)"


@pytest.mark.slow
def test_speculative_backend_gets_a_pool_from_the_store(tmp_path) -> None:
    from kar.generation.speculative import SpeculativeTransformersBackend
    from kar.records import GenerationOutput, SamplingParams

    store = KnowledgeStore(f"sqlite:///{tmp_path / 'k.db'}")
    earlier = [
        PromptRecord("item", str(n), KIND_ITEM, "movies", "v1",
                     ({"role": "user", "content": f"Facts about film {n}?"},))
        for n in range(3)
    ]  # fmt: skip
    params = SamplingParams(max_new_tokens=16)
    for p in earlier:
        out = GenerationOutput(text=f"Film {p.entity_id} is a drama.", prompt_tokens=5,
                               completion_tokens=8, finish_reason="stop")  # fmt: skip
        row = KnowledgeStore.make_row(p, out, model="smollm2-135m-instruct@float32",
                                      sampling_key=params.key(), params=params)  # fmt: skip
        store.write([row])
    new = [PromptRecord("item", "9", KIND_ITEM, "movies", "v1",
                        ({"role": "user", "content": "Facts about film 9?"},))]  # fmt: skip
    spec = {"mode": "exact", "draft_tokens": 4, "draft_tree": False, "min_support": 2}
    gen = settings(dtype="float32", speculative=spec)
    backend = make_backend(gen, store=store, prompts=new)
    assert isinstance(backend, SpeculativeTransformersBackend)
    assert backend.config.mode == "exact" and backend.config.draft_tokens == 4
    assert not backend.config.draft_tree and backend.config.min_support == 2
    assert backend.pool is not None and len(backend.pool) == 3
    index = backend.pool.route(new[0].messages).index
    assert index is not None and len(index) == 3
    assert backend.pool.neighbours_by_kind == {}  # neighbours: none (the default)
    assert backend.cpu_kernels  # on by default (kar.generation.cpu_kernels)


def test_cpu_kernels_setting_reaches_the_backend() -> None:
    """``generation.cpu_kernels: false`` keeps PyTorch's own linear layers."""
    import torch

    from kar.generation.transformers_backend import TransformersBackend

    backend = make_backend(settings(cpu_kernels=False))
    assert isinstance(backend, TransformersBackend) and not backend.cpu_kernels
    assert any(isinstance(m, torch.nn.Linear) for m in backend.model.modules())
    assert backend.model.config._attn_implementation == "sdpa"


def test_speculative_settings_reach_the_pool(tmp_path) -> None:
    """``min_first_support`` reaches the drafting config; ``neighbours: prompts`` weighs the
    answers about films whose prompts share words with the new one (the store's context
    text and the new prompts' both count)."""
    from kar.generation.draft_pool import KnowledgePool
    from kar.generation.factory import _speculative_config
    from kar.generation.speculative import SpeculativeConfig
    from kar.records import GenerationOutput, SamplingParams

    gen = settings(speculative={"mode": "exact", "min_first_support": 2, "neighbours": "prompts",
                                "neighbours_k": 1})  # fmt: skip
    assert _speculative_config(gen, SpeculativeConfig).min_first_support == 2
    store = KnowledgeStore(f"sqlite:///{tmp_path / 'k.db'}")
    params = SamplingParams(max_new_tokens=16)
    titles = {"1": "Toy Story (1995), Animation", "2": "Heat (1995), Crime, Thriller"}
    for entity, title in titles.items():
        prompt = PromptRecord(
            "item",
            entity,
            KIND_ITEM,
            "movies",
            "v1",
            ({"role": "user", "content": title},),
            context_text=title,
        )
        out = GenerationOutput(text="A film.", prompt_tokens=5, completion_tokens=3,
                               finish_reason="stop")  # fmt: skip
        store.write([KnowledgeStore.make_row(prompt, out, model="m", sampling_key=params.key(),
                                             params=params)])  # fmt: skip
    new = PromptRecord("item", "3", KIND_ITEM, "movies", "v1",
                       ({"role": "user", "content": "Aladdin"},),
                       context_text="Aladdin (1992), Animation, Musical")  # fmt: skip
    pool = KnowledgePool(encode=lambda text: [ord(c) for c in text])
    assert pool.add_store(store) == 2
    pool.use_text_neighbours([new], k=gen.speculative.neighbours_k)
    pool.register([new])
    assert pool.neighbours_by_kind[KIND_ITEM]("3") == ["1"]
    assert pool.route(new.messages).weights == {0: pool.neighbour_weight}
