"""Pool token states into one vector per text: mean, first token (CLS) or last real token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Pooling = Literal["mean", "cls", "last"]
POOLINGS: tuple[str, ...] = ("mean", "cls", "last")


def first_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first real token per row (0 with right padding, >0 with left padding)."""
    return mask.int().argmax(dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row; correct for left and right padding."""
    width = mask.shape[1]
    return width - 1 - mask.int().flip(dims=[1]).argmax(dim=1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """Reduce ``hidden`` (batch, seq, dim) to (batch, dim) using the attention ``mask``."""
    import torch

    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        total = (hidden * weights).sum(dim=1)
        return total / weights.sum(dim=1).clamp(min=1e-9)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":
        return hidden[rows, first_token_index(mask)]
    if mode == "last":
        return hidden[rows, last_token_index(mask)]
    raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLINGS}")
