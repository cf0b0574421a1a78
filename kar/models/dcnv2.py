"""DCN-V2 (Wang et al., 2021): full-rank cross network beside a deep tower (parallel)."""

from __future__ import annotations

import torch
from torch import nn

from kar.models.base import CTRModel, FeatureSpec, Inputs
from kar.models.config import DCNv2Config
from kar.models.layers import mlp, output_dim


class DCNv2(CTRModel):
    """x_{l+1} = x_0 * (W_l x_l + b_l) + x_l over [fields, mean behaviour, dense]."""

    config_class = DCNv2Config

    def __init__(self, spec: FeatureSpec, config: DCNv2Config, knowledge_dim: int = 0) -> None:
        super().__init__(spec, config, knowledge_dim)
        width = (self.inputs.n_fields + 1) * config.embedding_dim + self.inputs.dense_dim
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(config.cross_layers))
        self.deep = mlp(width, config.mlp_hidden, None, config.dropout)
        self.out = nn.Linear(width + output_dim(width, config.mlp_hidden), 1)

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = inputs.history_mean()
        x0 = torch.cat([inputs.fields.flatten(1), hist, inputs.dense], dim=-1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1)
