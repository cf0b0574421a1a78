"""AutoInt+ (Song et al., 2019): multi-head self-attention over fields, plus a deep tower."""

from __future__ import annotations

import torch
from torch import nn

from kar.models.base import CTRModel, FeatureSpec, Inputs
from kar.models.config import AutoIntConfig
from kar.models.layers import mlp


class InteractingLayer(nn.Module):
    """One multi-head self-attention layer with a projected residual connection and ReLU."""

    def __init__(self, in_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        out = heads * head_dim
        self.qkv = nn.Linear(in_dim, 3 * out, bias=False)
        self.residual = nn.Linear(in_dim, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape
        q, k, v = self.qkv(x).view(b, f, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, f, -1)
        return torch.relu(out + self.residual(x))


class AutoInt(CTRModel):
    """Fields (+ mean behaviour) through stacked interacting layers -> linear; deep on all."""

    config_class = AutoIntConfig

    def __init__(self, spec: FeatureSpec, config: AutoIntConfig, knowledge_dim: int = 0) -> None:
        super().__init__(spec, config, knowledge_dim)
        n_fields, e = self.inputs.n_fields + 1, config.embedding_dim
        width = config.heads * config.attention_dim
        dims = [e] + [width] * config.attention_layers
        self.attention = nn.Sequential(
            *(
                InteractingLayer(dims[j], config.heads, config.attention_dim)
                for j in range(len(dims) - 1)
            )
        )
        self.att_out = nn.Linear(n_fields * width, 1)
        self.deep = mlp(n_fields * e + self.inputs.dense_dim, config.mlp_hidden, 1, config.dropout)

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = inputs.history_mean().unsqueeze(1)
        fields = torch.cat([inputs.fields, hist], dim=1)
        att = self.att_out(self.attention(fields).flatten(1))
        deep = self.deep(torch.cat([fields.flatten(1), inputs.dense], dim=-1))
        return (att + deep).squeeze(-1)
