"""Faster CPU kernels (prepacked oneDNN linear weights, copy-free GQA attention): the
same numbers as PyTorch's defaults, and with the real SmolLM2 the same greedy answers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from kar.generation.cpu_kernels import (  # noqa: E402
    PackedLinear,
    cpu_gqa_sdpa_attention,
    pack_linear_weights,
    packed_dtypes,
    packed_linear_available,
)
from kar.records import SamplingParams  # noqa: E402

needs_onednn = pytest.mark.skipif(
    not packed_linear_available(), reason="this PyTorch build has no oneDNN prepacked linear"
)
BF16_PACKS = packed_linear_available() and torch.bfloat16 in packed_dtypes()
# bfloat16 cases need oneDNN's bfloat16 on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT)
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not BF16_PACKS, reason="oneDNN packs no bfloat16 weights on this CPU"))]  # fmt: skip


@needs_onednn
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 9, 40])
def test_packed_linear_computes_the_linear_layer(dtype, rows: int) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 160).to(dtype)
    packed = PackedLinear(linear)
    x = torch.randn(2, rows, 96, dtype=dtype)
    with torch.inference_mode():
        expected, got = linear(x), packed(x)
    assert got.shape == (2, rows, 160) and got.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance)
    assert packed.weight is linear.weight  # shared, so code reading weight.shape still works


@needs_onednn
def test_one_float32_row_uses_the_plain_weight_and_more_rows_the_packed_one() -> None:
    """A one-token step at batch 1 in float32 goes to MKL over the plain weight (faster on
    some CPUs); wider float32 inputs and bf16 go to oneDNN over the packed weight. Shown by
    packing a zeroed weight, then filling the plain one: only the routed calls see it."""
    torch.manual_seed(0)
    for dtype in packed_dtypes():
        linear = torch.nn.Linear(96, 160).to(dtype)
        with torch.no_grad():
            saved = linear.weight.clone()
            linear.weight.zero_()
            packed = PackedLinear(linear)  # packs the zeroed weight
            linear.weight.copy_(saved)  # the plain weight (shared) has the real values
        one, two = torch.randn(1, 1, 96, dtype=dtype), torch.randn(1, 2, 96, dtype=dtype)
        with torch.inference_mode():
            bias_only = linear.bias.expand(1, 2, 160)
            assert torch.equal(packed(two), bias_only)  # the packed (zeroed) weight
            if dtype == torch.float32:
                assert torch.equal(packed(one), linear(one))
            else:
                assert torch.equal(packed(one), bias_only[:, :1])


@needs_onednn
def test_pack_replaces_only_cpu_linear_layers() -> None:
    """float32 layers are packed; bfloat16 ones only where oneDNN supports them here."""
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(8, 4))
    )
    x = torch.randn(3, 8)
    with torch.inference_mode():
        expected = model(x)
        assert pack_linear_weights(model) == 2
        assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert torch.allclose(model(x), expected, atol=1e-5)
    half = torch.nn.Sequential(torch.nn.Linear(8, 8)).to(torch.bfloat16)
    assert pack_linear_weights(half) == (1 if BF16_PACKS else 0)  # never a oneDNN error


@pytest.mark.parametrize("with_mask", [True, False])
def test_gqa_attention_matches_repeated_heads(with_mask: bool) -> None:
    """9 query heads over 3 key/value heads, a 5-token pass over a 20-token cache (mask)
    or a causal prefill (no mask): the same output as repeating the key/value heads."""
    torch.manual_seed(0)
    q_len, kv_len = (5, 20) if with_mask else (20, 20)
    query = torch.randn(1, 9, q_len, 16)
    key, value = torch.randn(1, 3, kv_len, 16), torch.randn(1, 3, kv_len, 16)
    mask = None
    if with_mask:  # the cache holds 15 tokens; each new token sees the cache and those before
        mask = torch.ones(1, 1, q_len, kv_len, dtype=torch.bool)
        mask[..., 15:] = torch.tril(torch.ones(q_len, q_len, dtype=torch.bool))
        mask[..., 3] = False  # a padded cache slot
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    out, _ = cpu_gqa_sdpa_attention(module, query, key, value, mask, scaling=0.25)
    rep_k = key.repeat_interleave(3, dim=1)
    rep_v = value.repeat_interleave(3, dim=1)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, rep_k, rep_v, attn_mask=mask, scale=0.25, is_causal=not with_mask
    ).transpose(1, 2)
    assert out.shape == (1, q_len, 9, 16)
    assert torch.allclose(out, expected, atol=1e-5)


# -- real SmolLM2 ------------------------------------------------------------------------

PROMPTS = [
    [{"role": "user", "content": f"Movie: {title}. Describe its genre in one sentence."}]
    for title in ("Heat (1995)", "Babe (1995)", "Toy Story (1995)")
]


@pytest.mark.slow
@needs_onednn
@pytest.mark.parametrize("dtype", (["bfloat16"] if BF16_PACKS else []) + ["float32"])
def test_cpu_kernels_give_the_default_kernels_greedy_answers(dtype: str) -> None:
    """The backend with its CPU kernels (the default) and with PyTorch's own answer the
    same prompts the same, token for token, one at a time and as a left-padded batch."""
    from kar.generation.transformers_backend import TransformersBackend

    params = SamplingParams(max_new_tokens=24)
    answers = {}
    for cpu_kernels in (True, False):
        backend = TransformersBackend(dtype=dtype, cpu_kernels=cpu_kernels)
        linears = sum(isinstance(m, torch.nn.Linear) for m in backend.model.modules())
        assert (linears == 0) is cpu_kernels  # all replaced, or none
        one_by_one = [backend.generate([p], params)[0].text for p in PROMPTS]
        batched = [o.text for o in backend.generate(PROMPTS, params)]
        answers[cpu_kernels] = (one_by_one, batched)
    assert answers[True] == answers[False]
    assert all(answers[True][0])  # real answers, not empty strings
