"""Small torch building blocks shared by the adaptor and the backbones."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int, hidden: list[int], out_dim: int | None = None, dropout: float = 0.0
) -> nn.Sequential:
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
    return nn.Sequential(*layers)


def output_dim(in_dim: int, hidden: list[int], out_dim: int | None = None) -> int:
    """Width of what :func:`mlp` returns."""
    if out_dim is not None:
        return out_dim
    return hidden[-1] if hidden else in_dim
