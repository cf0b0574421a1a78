"""DIEN (Zhou et al., 2019): GRU interest extractor + attention-updated GRU interest evolver.

The auxiliary next-click loss of the paper is left out: behaviour sequences here hold
positives only, with no sampled negatives to contrast against.
"""

from __future__ import annotations

import torch
from torch import nn

from kar.models.base import CTRModel, FeatureSpec, Inputs
from kar.models.config import DIENConfig
from kar.models.layers import mlp


class AUGRUCell(nn.Module):
    """GRU cell whose update gate is scaled by an attention score: u' = a * u."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.x2h = nn.Linear(in_dim, 3 * hidden)
        self.h2h = nn.Linear(hidden, 3 * hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        xr, xu, xn = self.x2h(x).chunk(3, dim=-1)
        hr, hu, hn = self.h2h(h).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        u = torch.sigmoid(xu + hu) * att.unsqueeze(-1)
        n = torch.tanh(xn + r * hn)
        return (1 - u) * h + u * n


class DIEN(CTRModel):
    """Padded steps (left padding) leave the hidden states unchanged."""

    config_class = DIENConfig

    def __init__(self, spec: FeatureSpec, config: DIENConfig, knowledge_dim: int = 0) -> None:
        super().__init__(spec, config, knowledge_dim)
        e = config.embedding_dim
        h = config.gru_hidden or e
        self.hidden = h
        self.extractor = nn.GRUCell(e, h)
        self.attention = mlp(h + e, config.attention_hidden, 1)
        self.evolver = AUGRUCell(h, h)
        deep_in = self.inputs.n_fields * e + h + self.inputs.dense_dim
        self.deep = mlp(deep_in, config.mlp_hidden, 1, config.dropout)

    def interest(self, inputs: Inputs) -> torch.Tensor:
        """(B, H) final evolved interest w.r.t. the target item."""
        seq, mask = inputs.history, inputs.history_mask
        b, length, _ = seq.shape
        h = seq.new_zeros(b, self.hidden)
        states = []
        for t in range(length):
            keep = mask[:, t : t + 1].float()
            h = keep * self.extractor(seq[:, t], h) + (1 - keep) * h
            states.append(h)
        hs = torch.stack(states, dim=1)  # (B, L, H)
        target = inputs.target.unsqueeze(1).expand(-1, length, -1)
        scores = self.attention(torch.cat([hs, target], dim=-1)).squeeze(-1)
        scores = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask.float()
        z = seq.new_zeros(b, self.hidden)
        for t in range(length):
            keep = mask[:, t : t + 1].float()
            z = keep * self.evolver(hs[:, t], z, scores[:, t]) + (1 - keep) * z
        return z

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([inputs.fields.flatten(1), self.interest(inputs), inputs.dense], dim=-1)
        return self.deep(x).squeeze(-1)
