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
    from kar.project import ProjectFolder

    (tmp_path / "kar.yaml").write_text("generation:\n  backend: tgi\n")
    with pytest.raises(ConfigError, match="generation.backend"):
        ProjectFolder.load(tmp_path)


def test_store_ids() -> None:
    assert backend_model_name(settings(dtype="bfloat16")) == "smollm2-135m-instruct@bfloat16"
    assert backend_model_name(settings(backend="vllm", dtype="float32")) == (
        "smollm2-135m-instruct@float32"
    )
    exact = settings(dtype="bfloat16", speculative={"mode": "exact"})
    assert backend_model_name(exact) == "smollm2-135m-instruct@bfloat16"  # same output
    spec = {"mode": "relaxed", "top_k": 5, "min_prob": 0.05}
    relaxed = settings(dtype="bfloat16", speculative=spec)
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
    assert backend.cpu_kernels  # on by default (kar.generation.cpu_kernels)


def test_cpu_kernels_setting_reaches_the_backend() -> None:
    """``generation.cpu_kernels: false`` keeps PyTorch's own linear layers."""
    import torch

    from kar.generation.transformers_backend import TransformersBackend

    backend = make_backend(settings(backend="transformers", cpu_kernels=False))
    assert isinstance(backend, TransformersBackend) and not backend.cpu_kernels
    assert any(isinstance(m, torch.nn.Linear) for m in backend.model.modules())
    assert backend.model.config._attn_implementation == "sdpa"


def test_every_backend_name_maps_to_a_class_that_builds_from_settings() -> None:
    """The map covers exactly the names kar.yaml accepts (besides ``auto``, which picks one
    of them, and dotted paths), and each class (speculative included) has ``from_settings``;
    importing the classes loads no model library."""
    from kar.generation.factory import AUTO, BACKENDS, backend_class
    from kar.generation.speculative import SpeculativeTransformersBackend
    from kar.generation.transformers_backend import TransformersBackend

    names = [n for n in BACKENDS.names() if n != AUTO]
    assert set(BACKENDS) == set(names) and BACKENDS.names() == [AUTO, *names]
    for name in names:
        gen = settings(backend=name, openai={"model": "m"})
        cls = backend_class(gen)
        assert cls.__name__.lower().startswith(name.lower()) and callable(cls.from_settings)
    assert backend_class(settings(backend="transformers")) is TransformersBackend
    speculative = settings(speculative={"mode": "exact"})
    assert backend_class(speculative) is SpeculativeTransformersBackend


def test_measured_no_gain_settings_are_gone() -> None:
    """``neighbours`` and ``min_first_support`` changed nothing when measured: kar.yaml
    now rejects them by name."""
    for field in ("neighbours", "neighbours_k", "min_first_support"):
        with pytest.raises(ValueError, match=field):
            settings(speculative={"mode": "exact", field: 1})
