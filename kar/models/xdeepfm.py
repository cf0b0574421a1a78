"""xDeepFM (Lian et al., 2018): linear + compressed interaction network (CIN) + deep tower."""

from __future__ import annotations

import torch
from torch import nn

from kar.models.base import CTRModel, FeatureSpec, FirstOrder, Inputs
from kar.models.config import XDeepFMConfig
from kar.models.layers import mlp


class CIN(nn.Module):
    """Vector-wise explicit interactions: X_k = conv1x1(X_{k-1} (outer) X_0), sum-pooled."""

    def __init__(self, n_fields: int, layers: list[int]) -> None:
        super().__init__()
        sizes = [n_fields, *layers]
        self.convs = nn.ModuleList(
            nn.Conv1d(sizes[j] * n_fields, sizes[j + 1], 1) for j in range(len(layers))
        )
        self.out_dim = sum(layers)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:  # (B, F, E) -> (B, sum(layers))
        b, _, e = x0.shape
        x, pooled = x0, []
        for conv in self.convs:
            z = torch.einsum("bhe,bme->bhme", x, x0).reshape(b, -1, e)
            x = torch.relu(conv(z))
            pooled.append(x.sum(-1))
        return torch.cat(pooled, dim=-1)


class XDeepFM(CTRModel):
    """First-order user/item biases + dense linear, CIN over fields, deep over fields + dense."""

    config_class = XDeepFMConfig

    def __init__(self, spec: FeatureSpec, config: XDeepFMConfig, knowledge_dim: int = 0) -> None:
        super().__init__(spec, config, knowledge_dim)
        n_fields = self.inputs.n_fields + 1
        self.first_order = FirstOrder(spec)
        self.cin = CIN(n_fields, config.cin_layers)
        self.cin_out = nn.Linear(self.cin.out_dim, 1)
        deep_in = n_fields * config.embedding_dim + self.inputs.dense_dim
        self.deep = mlp(deep_in, config.mlp_hidden, 1, config.dropout)

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = inputs.history_mean().unsqueeze(1)
        fields = torch.cat([inputs.fields, hist], dim=1)
        out = self.first_order(inputs, batch)
        out = out + self.cin_out(self.cin(fields))
        out = out + self.deep(torch.cat([fields.flatten(1), inputs.dense], dim=-1))
        return out.squeeze(-1)
