"""DIN (Zhou et al., 2018): attention over the behaviour sequence w.r.t. the target item."""

from __future__ import annotations

import torch

from kar.models.base import CTRModel, FeatureSpec, Inputs
from kar.models.config import DINConfig
from kar.models.layers import mlp


class DIN(CTRModel):
    """Local activation unit on [h, t, h - t, h * t]; weights are not softmax-normalised."""

    config_class = DINConfig

    def __init__(self, spec: FeatureSpec, config: DINConfig, knowledge_dim: int = 0) -> None:
        super().__init__(spec, config, knowledge_dim)
        e = config.embedding_dim
        self.attention = mlp(4 * e, config.attention_hidden, 1)
        deep_in = (self.inputs.n_fields + 1) * e + self.inputs.dense_dim
        self.deep = mlp(deep_in, config.mlp_hidden, 1, config.dropout)

    def interest(self, inputs: Inputs) -> torch.Tensor:
        """(B, E) attention-weighted sum of the behaviour sequence."""
        h = inputs.history
        t = inputs.target.unsqueeze(1).expand_as(h)
        scores = self.attention(torch.cat([h, t, h - t, h * t], dim=-1)).squeeze(-1)
        scores = scores * inputs.history_mask.float()
        return (scores.unsqueeze(-1) * h).sum(1)

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([inputs.fields.flatten(1), self.interest(inputs), inputs.dense], dim=-1)
        return self.deep(x).squeeze(-1)
