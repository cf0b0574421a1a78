"""Small torch building blocks shared by the adaptor and the backbones."""

from __future__ import annotations

import torch
from torch import nn

_SPAN = 1 << 16  # the masks' resolution: each row's draw is one random 16-bit integer


class MaskDropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on CPU: 16 random bits per element, drawn 64 at a
    time (PyTorch draws a Bernoulli variate per element, which costs as much as the matmuls
    of a small MLP). Keeps each element with probability 1 - p (p rounded to 1/65,536) and
    scales it by 1 / (1 - p), as nn.Dropout; ``reference = True`` uses nn.Dropout itself."""

    reference: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.reference or self.inplace or self.p >= 1.0 or not x.is_floating_point():
            return super().forward(x)
        drop = round(self.p * _SPAN)
        words = torch.randint(-(1 << 63), (1 << 63) - 1, ((x.numel() + 3) // 4,), device=x.device)
        bits = words.view(torch.int16)[: x.numel()].view(x.shape)
        keep = (bits >= drop - _SPAN // 2).to(x.dtype).mul_(_SPAN / (_SPAN - drop))
        return x * keep


def mlp(
    in_dim: int, hidden: list[int], out_dim: int | None = None, dropout: float = 0.0
) -> nn.Sequential:
    """Linear -> ReLU -> Dropout per hidden layer, then an optional linear output layer."""
    layers: list[nn.Module] = []
    dim = in_dim
    for width in hidden:
        layers += [nn.Linear(dim, width), nn.ReLU()]
        if dropout:
            layers.append(MaskDropout(dropout))
        dim = width
    if out_dim is not None:
        layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def output_dim(in_dim: int, hidden: list[int], out_dim: int | None = None) -> int:
    """Width of what :func:`mlp` returns."""
    if out_dim is not None:
        return out_dim
    return hidden[-1] if hidden else in_dim
