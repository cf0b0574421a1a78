"""DeepFM (Guo et al., 2017): first-order terms + FM over field embeddings + a deep tower."""

from __future__ import annotations

import torch

from kar.models.base import CTRModel, FeatureSpec, FirstOrder, Inputs
from kar.models.config import DeepFMConfig
from kar.models.layers import mlp


class DeepFM(CTRModel):
    """The behaviour sequence enters as one more field (mean of its item embeddings)."""

    config_class = DeepFMConfig

    def __init__(self, spec: FeatureSpec, config: DeepFMConfig, knowledge_dim: int = 0) -> None:
        super().__init__(spec, config, knowledge_dim)
        n_fields = self.inputs.n_fields + 1
        self.first_order = FirstOrder(spec)
        deep_in = n_fields * config.embedding_dim + self.inputs.dense_dim
        self.deep = mlp(deep_in, config.mlp_hidden, 1, config.dropout)

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = inputs.history_mean().unsqueeze(1)
        fields = torch.cat([inputs.fields, hist], dim=1)  # (B, F, E)
        first = self.first_order(inputs, batch)
        fm = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(-1, keepdim=True)
        deep = self.deep(torch.cat([fields.flatten(1), inputs.dense], dim=-1))
        return (first + fm + deep).squeeze(-1)
