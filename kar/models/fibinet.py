"""FiBiNET (Huang et al., 2019): SENET field importance + bilinear interactions + deep tower."""

from __future__ import annotations

import torch
from torch import nn

from kar.models.base import CTRModel, FeatureSpec, Inputs
from kar.models.config import FiBiNetConfig
from kar.models.layers import mlp


class SENet(nn.Module):
    """Squeeze (mean over the embedding) -> excite (two layers) -> re-weight each field."""

    def __init__(self, n_fields: int, reduction_ratio: int) -> None:
        super().__init__()
        hidden = max(1, n_fields // reduction_ratio)
        self.excite = nn.Sequential(
            nn.Linear(n_fields, hidden), nn.ReLU(), nn.Linear(hidden, n_fields), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(x.mean(-1)).unsqueeze(-1)


class Bilinear(nn.Module):
    """p_ij = (v_i W) * v_j for every field pair i < j; W shared, per field, or per pair."""

    def __init__(self, n_fields: int, dim: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.rows, self.cols = torch.triu_indices(n_fields, n_fields, offset=1)
        n_w = {"field_all": 1, "field_each": n_fields, "field_interaction": len(self.rows)}[kind]
        self.weight = nn.Parameter(torch.randn(n_w, dim, dim) * dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, E) -> (B, P * E)
        vi, vj = x[:, self.rows], x[:, self.cols]
        if self.kind == "field_all":
            left = vi @ self.weight[0]
        elif self.kind == "field_each":
            left = torch.einsum("bpe,pef->bpf", vi, self.weight[self.rows])
        else:
            left = torch.einsum("bpe,pef->bpf", vi, self.weight)
        return (left * vj).flatten(1)


class FiBiNet(CTRModel):
    """Bilinear over raw and SENET-weighted fields, concatenated with the fields themselves and
    the dense input -> deep tower. (The raw fields are kept, as in FiBiNET++: with embeddings
    held small by weight decay, products of pairs alone carry too little signal to learn.)"""

    config_class = FiBiNetConfig

    def __init__(self, spec: FeatureSpec, config: FiBiNetConfig, knowledge_dim: int = 0) -> None:
        super().__init__(spec, config, knowledge_dim)
        n_fields, e = self.inputs.n_fields + 1, config.embedding_dim
        self.senet = SENet(n_fields, config.reduction_ratio)
        self.bilinear = Bilinear(n_fields, e, config.bilinear_type)
        pairs = n_fields * (n_fields - 1) // 2
        deep_in = (n_fields + 2 * pairs) * e + self.inputs.dense_dim
        self.deep = mlp(deep_in, config.mlp_hidden, 1, config.dropout)

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = inputs.history_mean().unsqueeze(1)
        fields = torch.cat([inputs.fields, hist], dim=1)
        x = [fields.flatten(1), self.bilinear(fields), self.bilinear(self.senet(fields))]
        x.append(inputs.dense)
        return self.deep(torch.cat(x, dim=-1)).squeeze(-1)
