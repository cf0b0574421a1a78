"""Faster CPU kernels for a loaded Hugging Face causal LM: prepacked linear weights and
grouped-query attention without copying the KV cache.

Both matter most for speculative decoding, whose verification pass feeds a few tokens per
row at once. With PyTorch's default float32 kernels (MKL ``sgemm``, which repacks each
weight matrix on every call) a pass of 2..9 tokens cost 1.5-2.2x a one-token step on an
AMD Zen 4; over weights reordered once at load for oneDNN's linear (what PyTorch's own
inductor does when it freezes a model) it costs 0.9-1.2x there, and 1.3-1.7x (PyTorch's:
1.2-2.3x) on an Intel Xeon (``benchmarks/cpu_kernels.py``). And
transformers' ``sdpa`` attention repeats the key/value heads (a copy of the whole cache,
every layer) whenever a mask is passed, which a verification pass always does; PyTorch's
CPU ``scaled_dot_product_attention`` takes ``enable_gqa=True`` with a mask, so no copy is
needed.

The ops used (``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``) are
PyTorch internals; :func:`packed_linear_available` checks for them, and a model is left as
it is where they are missing.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# rows a packed weight is laid out for: verification passes hold 2..16 tokens (a single
# float32 row skips the packed weight: see PackedLinear.forward)
PACK_ROWS_HINT = 16
CPU_GQA_ATTENTION = "kar_cpu_gqa_sdpa"


def packed_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's prepacked linear ops."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def packed_dtypes() -> tuple[torch.dtype, ...]:
    """The weight dtypes oneDNN packs on this CPU: float32, and bfloat16 where it has the
    instructions for it (AVX-512 BW/VL/DQ or AVX-NE-CONVERT; without them oneDNN refuses
    to reorder a bfloat16 weight, and such layers stay PyTorch's)."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    bf16 = bool(supported()) if supported is not None else False
    return (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` for inference on a CPU, over a weight reordered once by oneDNN.

    It keeps the original ``weight`` (shared, no copy) so code that reads its shape still
    works, and so one float32 row can go to MKL over it; the packed copy is the extra
    memory (one copy of the layer's weight)."""

    def __init__(self, linear: torch.nn.Linear, rows_hint: int = PACK_ROWS_HINT) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.detach()
        if x.dtype == torch.float32 and x.numel() == self.in_features:
            # one float32 row (a one-token step at batch 1): MKL's matrix-vector product
            # over the plain weight is as fast on AMD Zen 4 and ~1.25x faster on Intel
            # Xeon (Emerald Rapids) than oneDNN's packed kernel (benchmarks/cpu_kernels.py)
            return torch.nn.functional.linear(x, self.weight.detach(), bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def pack_linear_weights(model: Any, rows_hint: int = PACK_ROWS_HINT) -> int:
    """Replace every ``nn.Linear`` of ``model`` (on the CPU, of a dtype in :func:`packed_dtypes`)
    by its prepacked counterpart, in place. Returns how many were replaced (0 where the ops are
    missing). For inference only: the packed copies do not train."""
    if not packed_linear_available():
        log.info("oneDNN prepacked linear ops not available; model left as it is")
        return 0
    replaced, dtypes = 0, packed_dtypes()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, torch.nn.Linear)
                and child.weight.device.type == "cpu"
                and child.weight.dtype in dtypes
            ):
                setattr(parent, name, PackedLinear(child, rows_hint))
                replaced += 1
    return replaced


def use_cpu_gqa_attention(model: Any) -> bool:
    """Switch ``model`` to :func:`cpu_gqa_sdpa_attention` when it runs transformers' ``sdpa``
    attention on grouped-query heads. Returns whether it switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if getattr(config, "_attn_implementation", None) != "sdpa" or heads == kv_heads:
        return False
    AttentionInterface.register(CPU_GQA_ATTENTION, cpu_gqa_sdpa_attention)
    AttentionMaskInterface.register(CPU_GQA_ATTENTION, sdpa_mask)  # the masks sdpa gets
    model.set_attn_implementation(CPU_GQA_ATTENTION)
    return True


def cpu_gqa_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' ``sdpa`` attention, but on a CPU grouped-query heads go to
    ``scaled_dot_product_attention(enable_gqa=True)`` also when a mask is given, instead of
    a copy of the cache with the key/value heads repeated. Anything else (other devices,
    a position bias, a paged cache) goes to transformers' own function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal
    if (
        query.device.type != "cpu"
        or groups == 1
        or kwargs.get("position_bias") is not None
        or kwargs.get("cache") is not None
        or kwargs.get("output_attentions", False)
        or (causal and key.shape[2] != query.shape[2])  # SDPA's causal mask is top-left
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None
