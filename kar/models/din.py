"""DIN (Zhou et al., 2018): attention over the behaviour sequence w.r.t. the target item."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        if self.reference:
            t = inputs.target.unsqueeze(1).expand_as(h)
            scores = self.attention(torch.cat([h, t, h - t, h * t], dim=-1)).squeeze(-1)
        else:
            scores = self.attention[1:](self.first_layer(h, inputs.target)).squeeze(-1)
        scores = scores * inputs.history_mask.float()
        return (scores.unsqueeze(-1) * h).sum(1)

    def first_layer(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The activation unit's first linear layer on [h, t, h - t, h * t], (B, L, hidden),
        without building that (B, L, 4E) input: W_h h + W_t t + W_d (h - t) + W_p (h * t)
        = (W_h + W_d) h + W_p (h * t) + (W_t - W_d) t, the t term once per row."""
        first = self.attention[0]
        w_h, w_t, w_d, w_p = first.weight.chunk(4, dim=1)
        pairs = torch.cat([h, h * t.unsqueeze(1)], dim=-1)
        per_step = F.linear(pairs, torch.cat([w_h + w_d, w_p], dim=1))
        return per_step.add_(F.linear(t, w_t - w_d, first.bias).unsqueeze(1))

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([inputs.fields.flatten(1), self.interest(inputs), inputs.dense], dim=-1)
        return self.deep(x).squeeze(-1)
