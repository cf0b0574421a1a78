"""DIEN (Zhou et al., 2019): GRU interest extractor + attention-updated GRU interest evolver.

The interest extractor is trained with the paper's auxiliary loss as well: each hidden state
h_t must tell the next clicked item e_{t+1} from an item sampled from the catalog, through a
small auxiliary network on [h_t, e]; steps are masked by the history length. The term,
weighted by ``aux_weight`` (1.0 as in the paper; 0 disables it), is exposed through
:meth:`CTRModel.auxiliary_loss` after each training forward pass and added to the CTR loss
by ``train_ctr``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        self.aux_weight = config.aux_weight
        # Built last and only when used: with aux_weight 0 the model (parameters, random
        # draws) is exactly DIEN without the auxiliary loss.
        self.aux_net = mlp(h + e, config.aux_hidden, 1) if self.aux_weight > 0 else None

    def extract(self, inputs: Inputs) -> torch.Tensor:
        """(B, L, H) interest-extractor hidden states."""
        seq, mask = inputs.history, inputs.history_mask
        h = seq.new_zeros(seq.shape[0], self.hidden)
        states = []
        for t in range(seq.shape[1]):
            keep = mask[:, t : t + 1].float()
            h = keep * self.extractor(seq[:, t], h) + (1 - keep) * h
            states.append(h)
        return torch.stack(states, dim=1)

    def interest(self, inputs: Inputs, hs: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H) final evolved interest w.r.t. the target item."""
        seq, mask = inputs.history, inputs.history_mask
        b, length, _ = seq.shape
        hs = self.extract(inputs) if hs is None else hs
        target = inputs.target.unsqueeze(1).expand(-1, length, -1)
        scores = self.attention(torch.cat([hs, target], dim=-1)).squeeze(-1)
        scores = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask.float()
        z = seq.new_zeros(b, self.hidden)
        for t in range(length):
            keep = mask[:, t : t + 1].float()
            z = keep * self.evolver(hs[:, t], z, scores[:, t]) + (1 - keep) * z
        return z

    def next_click_loss(
        self, hs: torch.Tensor, inputs: Inputs, history: torch.Tensor
    ) -> torch.Tensor:
        """The auxiliary loss (unweighted): BCE of h_t vs the next clicked item (label 1)
        and vs a catalog item sampled uniformly (label 0), mean over the steps t where both
        t and t + 1 are real history items."""
        assert self.aux_net is not None
        pairs = inputs.history_mask[:, :-1] & inputs.history_mask[:, 1:]  # (B, L-1)
        n_items = self.spec.n_items
        if not bool(pairs.any()) or n_items < 3:
            return hs.sum() * 0.0  # nothing to contrast (keeps the graph connected)
        positives = history[:, 1:]
        negatives = torch.randint(1, n_items, positives.shape, device=positives.device)
        clash = negatives == positives  # resample a clash as the next catalog item
        negatives = torch.where(clash, negatives % (n_items - 1) + 1, negatives)
        states = hs[:, :-1][pairs]  # (P, H)
        pos = self.aux_net(torch.cat([states, inputs.history[:, 1:][pairs]], -1)).squeeze(-1)
        neg_emb = self.inputs.item(negatives[pairs])
        neg = self.aux_net(torch.cat([states, neg_emb], -1)).squeeze(-1)
        return F.binary_cross_entropy_with_logits(
            pos, torch.ones_like(pos)
        ) + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hs = self.extract(inputs)
        if self.training and self.aux_net is not None:
            self._auxiliary = self.aux_weight * self.next_click_loss(hs, inputs, batch["history"])
        x = torch.cat([inputs.fields.flatten(1), self.interest(inputs, hs), inputs.dense], dim=-1)
        return self.deep(x).squeeze(-1)
