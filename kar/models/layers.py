"""Small torch building blocks shared by the adaptor and the backbones."""

from __future__ import annotations

import torch
from torch import nn

# a training-time dropout mask costs one 16-bit draw per element: four per 64-bit word of
# torch's (seeded) generator, compared with a threshold; ``torch.bernoulli_`` draws one
# float per element (about 5x slower on CPU, ~20% of a DeepFM step at batch 1024)
_BITS = 16


def dropout_threshold(p: float) -> int:
    """The int16 threshold below which an element is dropped: P(drop) = round(p 2^16) / 2^16,
    within 2^-17 of ``p``."""
    return round(p * (1 << _BITS)) - (1 << (_BITS - 1))


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """(bool mask of the elements kept, the scale 1 / P(keep)) for dropout with rate ``p``,
    from torch's default generator (so ``torch.manual_seed`` makes it reproducible)."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    threshold = dropout_threshold(p)
    keep = words.view(torch.int16)[:n].view(shape) >= threshold
    kept = 1.0 - (threshold + (1 << (_BITS - 1))) / (1 << _BITS)
    return keep, 1.0 / kept


class _ReLUDropout(torch.autograd.Function):
    """relu(x) * keep * scale in two passes, its backward in two (from the output alone:
    the gradient flows where the output is > 0)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, p: float
    ) -> torch.Tensor:
        keep, scale = keep_mask(x.shape, p)
        out = x.clamp_min(0.0).mul_(keep).mul_(scale)
        ctx.save_for_backward(out)
        ctx.scale = scale  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (out,) = ctx.saved_tensors  # type: ignore[attr-defined]
        scale = ctx.scale  # type: ignore[attr-defined]
        return torch.ops.aten.threshold_backward(grad, out, 0.0).mul_(scale), None


def relu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-time ``dropout(relu(x), p)`` with :func:`keep_mask`'s cheaper mask."""
    if p <= 0.0:
        return torch.relu(x)
    return _ReLUDropout.apply(x, p)


class MLP(nn.Sequential):
    """:func:`mlp`'s ``nn.Sequential`` (same modules, indices and state dict). In training,
    each ReLU -> Dropout pair runs as one :func:`relu_dropout` (a cheaper mask of the same
    rate: other random numbers than ``nn.Dropout``'s); ``reference = True`` runs the
    modules one by one, ``nn.Dropout`` included."""

    reference: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.reference or not self.training:
            return super().forward(x)
        layers = list(self)
        i = 0
        while i < len(layers):
            layer = layers[i]
            follows = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.ReLU) and type(follows) is nn.Dropout:
                x = relu_dropout(x, follows.p)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x


def mlp(in_dim: int, hidden: list[int], out_dim: int | None = None, dropout: float = 0.0) -> MLP:
    """Linear -> ReLU -> Dropout per hidden layer, then an optional linear output layer."""
    layers: list[nn.Module] = []
    dim = in_dim
    for width in hidden:
        layers += [nn.Linear(dim, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        dim = width
    if out_dim is not None:
        layers.append(nn.Linear(dim, out_dim))
    return MLP(*layers)


def output_dim(in_dim: int, hidden: list[int], out_dim: int | None = None) -> int:
    """Width of what :func:`mlp` returns."""
    if out_dim is not None:
        return out_dim
    return hidden[-1] if hidden else in_dim
