"""Pool token states into one vector per text: mean, first token (CLS), last real token, or
the state at a special token (``[ITEM]``, HLLM / NoteLLM: the text is followed by a short
prompt ending in that token, added to the tokenizer; docs/embedding.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from kar.errors import KarError

if TYPE_CHECKING:
    import torch

Pooling = Literal["mean", "cls", "last", "token"]
POOLINGS: tuple[str, ...] = ("mean", "cls", "last", "token")
ITEM_TOKEN = "[ITEM]"
#: Appended after the text for token pooling; the vector is read at ``[ITEM]``.
TOKEN_PROMPT = f'\nThe item above in one word: "{ITEM_TOKEN}"'


def first_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first real token per row (0 with right padding, >0 with left padding)."""
    return mask.int().argmax(dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row; correct for left and right padding."""
    width = mask.shape[1]
    return width - 1 - mask.int().flip(dims=[1]).argmax(dim=1)


def token_positions(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Per row, the index of the last occurrence of ``token_id``; a KarError if a row has none."""
    match = input_ids == token_id
    found = match.any(dim=1)
    if not bool(found.all()):
        row = int((~found).nonzero()[0, 0])
        raise KarError(f"row {row} of the batch has no {ITEM_TOKEN} token (truncated?)")
    return last_token_index(match)


def token_pool(hidden: torch.Tensor, input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """hidden (batch, seq, dim) -> (batch, dim): the state at each row's special token."""
    import torch

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, token_positions(input_ids, token_id)]


def pool(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    mode: Pooling,
    input_ids: torch.Tensor | None = None,
    token_id: int | None = None,
) -> torch.Tensor:
    """Reduce ``hidden`` (batch, seq, dim) to (batch, dim) using the attention ``mask``
    (``token``: at ``token_id`` in ``input_ids``)."""
    import torch

    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        total = (hidden * weights).sum(dim=1)
        return total / weights.sum(dim=1).clamp(min=1e-9)
    if mode == "token":
        if input_ids is None or token_id is None:
            raise ValueError("token pooling needs the input ids and the special token's id")
        return token_pool(hidden, input_ids, token_id)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":
        return hidden[rows, first_token_index(mask)]
    if mode == "last":
        return hidden[rows, last_token_index(mask)]
    raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLINGS}")
