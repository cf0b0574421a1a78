"""The input layer every backbone shares, and the backbone base class.

All backbones see the same inputs the same way: one embedding per field (user id, item id,
user attributes, year bucket, creator, mean-pooled genres), the behaviour sequence as item
embeddings, and -- when knowledge is given -- the adapted user and item vectors, each both
projected into an extra field and concatenated raw into a dense vector for the deep part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from kar.models.config import ModelConfig
from kar.models.inputs import CTRFeatures


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabulary sizes (index 0 included) a model needs to build its embeddings."""

    n_users: int
    n_items: int
    user_attr_sizes: tuple[int, ...]
    item_attr_sizes: tuple[int, ...]
    n_genres: int
    history_len: int

    @classmethod
    def from_features(cls, f: CTRFeatures) -> FeatureSpec:
        return cls(
            n_users=f.n_users + 1,
            n_items=f.n_items + 1,
            user_attr_sizes=tuple(f.user_attr_sizes),
            item_attr_sizes=tuple(f.item_attr_sizes),
            n_genres=f.n_genres,
            history_len=f.history_len,
        )


class Knowledge(NamedTuple):
    """Adapted knowledge for a batch: vectors (B, k) and missing flags (B,)."""

    user: torch.Tensor
    item: torch.Tensor
    user_missing: torch.Tensor
    item_missing: torch.Tensor


class Inputs(NamedTuple):
    """What the input layer hands a backbone."""

    fields: torch.Tensor  # (B, F, E)
    dense: torch.Tensor  # (B, D); D = 0 without knowledge
    history: torch.Tensor  # (B, L, E)
    history_mask: torch.Tensor  # (B, L) bool, True where a real item
    target: torch.Tensor  # (B, E) target item embedding


class CTRInputLayer(nn.Module):
    """Embeds a batch (see :meth:`CTRFeatures.tensors`) plus optional knowledge."""

    def __init__(self, spec: FeatureSpec, embedding_dim: int, knowledge_dim: int = 0) -> None:
        super().__init__()
        e = embedding_dim
        self.knowledge_dim = knowledge_dim
        self.user = nn.Embedding(spec.n_users, e, padding_idx=0)
        self.item = nn.Embedding(spec.n_items, e, padding_idx=0)
        self.user_attrs = nn.ModuleList(nn.Embedding(n, e) for n in spec.user_attr_sizes)
        self.item_attrs = nn.ModuleList(nn.Embedding(n, e) for n in spec.item_attr_sizes)
        self.genres = nn.Embedding(spec.n_genres, e, padding_idx=0)
        self.n_fields = 3 + len(spec.user_attr_sizes) + len(spec.item_attr_sizes)
        if knowledge_dim:
            self.user_proj = nn.Linear(knowledge_dim, e)
            self.item_proj = nn.Linear(knowledge_dim, e)
            self.missing = nn.Parameter(torch.zeros(2, e))  # field value when knowledge is absent
            self.n_fields += 2
        self.dense_dim = 2 * knowledge_dim + 2 if knowledge_dim else 0
        for emb in self.modules():
            if isinstance(emb, nn.Embedding):
                nn.init.normal_(emb.weight, std=0.01)

    def forward(self, batch: dict[str, torch.Tensor], knowledge: Knowledge | None) -> Inputs:
        target = self.item(batch["item"])
        fields = [self.user(batch["user"]), target]
        fields += [emb(batch["user_attrs"][:, j]) for j, emb in enumerate(self.user_attrs)]
        fields += [emb(batch["item_attrs"][:, j]) for j, emb in enumerate(self.item_attrs)]
        genres = batch["genres"]
        g_mask = (genres > 0).unsqueeze(-1).float()
        fields.append((self.genres(genres) * g_mask).sum(1) / g_mask.sum(1).clamp(min=1.0))
        batch_size = target.shape[0]
        dense = target.new_zeros((batch_size, 0))
        if self.knowledge_dim:
            if knowledge is None:
                raise ValueError("this model was built with knowledge; pass it")
            um = knowledge.user_missing.unsqueeze(-1)
            im = knowledge.item_missing.unsqueeze(-1)
            u = knowledge.user * (1 - um)
            i = knowledge.item * (1 - im)
            fields.append(self.user_proj(u) * (1 - um) + self.missing[0] * um)
            fields.append(self.item_proj(i) * (1 - im) + self.missing[1] * im)
            dense = torch.cat([u, i, um, im], dim=-1)
        history = batch["history"]
        return Inputs(
            fields=torch.stack(fields, dim=1),
            dense=dense,
            history=self.item(history),
            history_mask=history > 0,
            target=target,
        )


class CTRModel(nn.Module):
    """Backbone base class: builds the shared input layer; subclasses implement ``logit``."""

    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, spec: FeatureSpec, config: ModelConfig, knowledge_dim: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.inputs = CTRInputLayer(spec, config.embedding_dim, knowledge_dim)
        self._auxiliary: torch.Tensor | None = None

    def logit(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def auxiliary_loss(self) -> torch.Tensor | None:
        """An extra loss term (already weighted) from the last training forward pass, or None;
        reading it clears it. ``train_ctr`` adds it to the CTR loss (e.g. DIEN's next-click
        loss): a backbone sets ``self._auxiliary`` in ``logit`` to use the hook."""
        aux, self._auxiliary = self._auxiliary, None
        return aux

    def forward(
        self, batch: dict[str, torch.Tensor], knowledge: Knowledge | None = None
    ) -> torch.Tensor:
        """Logits, shape (B,)."""
        return self.logit(self.inputs(batch, knowledge), batch)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L, E) over L where mask (B, L) is True; zeros for empty rows."""
    m = mask.unsqueeze(-1).float()
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class FirstOrder(nn.Module):
    """First-order term of the FM family: user and item biases plus a linear map of the dense
    knowledge inputs (when the model has them)."""

    def __init__(self, spec: FeatureSpec, dense_dim: int) -> None:
        super().__init__()
        self.user_bias = nn.Embedding(spec.n_users, 1, padding_idx=0)
        self.item_bias = nn.Embedding(spec.n_items, 1, padding_idx=0)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.dense_linear = nn.Linear(dense_dim, 1) if dense_dim else None

    def forward(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1) first-order logit."""
        out = self.user_bias(batch["user"]) + self.item_bias(batch["item"])
        if self.dense_linear is not None:
            out = out + self.dense_linear(inputs.dense)
        return out
