"""The input layer every backbone shares, and the backbone base class.

All backbones see the same inputs the same way: one embedding per field (user id, item id,
user attributes, year bucket, creator, mean-pooled genres), the behaviour sequence as item
embeddings plus an embedding of each past interaction's label, and the point-in-time
counters (:mod:`kar.models.counters`) as the dense input, also read by a linear "wide" term.

Knowledge, when given, is added to the embeddings it describes: the adapted user vector to
the user field, the adapted item vector to the target item and to every item of the
behaviour sequence, each through a projection that starts at zero. So the fields, the
dense input and every backbone's shapes are the same with and without knowledge, a model
with knowledge starts as the same function as the model without (and can be warm-started
from it), and knowledge that carries nothing can stay closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from kar.models.config import ModelConfig
from kar.models.counters import COUNTER_NAMES
from kar.models.inputs import CTRFeatures


class _IndexLookup(torch.autograd.Function):
    """Row lookup whose backward is one ``index_add_`` (PyTorch's dense embedding backward
    on CPU sorts the indices first: about twice as slow on a (B, L) behaviour sequence)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        weight: torch.Tensor,
        index: torch.Tensor,
        padding_idx: int | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx  # type: ignore[attr-defined]
        flat = weight.index_select(0, index.reshape(-1))
        return flat.view(*index.shape, weight.shape[1])

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        (index,) = ctx.saved_tensors  # type: ignore[attr-defined]
        flat = grad.reshape(-1, grad.shape[-1])
        out = flat.new_zeros(ctx.rows, flat.shape[1])  # type: ignore[attr-defined]
        out.index_add_(0, index.reshape(-1), flat)
        if ctx.padding_idx is not None:  # type: ignore[attr-defined]
            out[ctx.padding_idx] = 0.0  # type: ignore[attr-defined]
        return out, None, None


class IndexEmbedding(nn.Embedding):
    """``nn.Embedding`` (same parameters, state dict and gradients: the padding row gets
    none) with a faster CPU backward; ``reference = True`` uses nn.Embedding's own ops."""

    reference: bool = False

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if self.reference or self.max_norm is not None or self.sparse:
            return super().forward(index)
        if not torch.is_grad_enabled() or not self.weight.requires_grad:
            flat = self.weight.index_select(0, index.reshape(-1))
            return flat.view(*index.shape, self.weight.shape[1])
        return _IndexLookup.apply(self.weight, index, self.padding_idx)


class _MultiLookup(torch.autograd.Function):
    """Several :class:`_IndexLookup`s as one autograd node (one Python call each way)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, paddings: tuple, *args: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = len(paddings)
        weights, indices = args[:n], args[n:]
        ctx.save_for_backward(*indices)
        ctx.rows, ctx.paddings = [w.shape[0] for w in weights], paddings  # type: ignore[attr-defined]
        return tuple(
            w.index_select(0, i.reshape(-1)).view(*i.shape, w.shape[1])
            for w, i in zip(weights, indices, strict=True)
        )

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        indices = ctx.saved_tensors  # type: ignore[attr-defined]
        sizes, paddings = ctx.rows, ctx.paddings  # type: ignore[attr-defined]
        out: list[torch.Tensor | None] = [None]
        for grad, index, rows, pad in zip(grads, indices, sizes, paddings, strict=True):
            flat = grad.reshape(-1, grad.shape[-1])
            table = flat.new_zeros(rows, flat.shape[1]).index_add_(0, index.reshape(-1), flat)
            if pad is not None:
                table[pad] = 0.0
            out.append(table)
        return (*out, *([None] * len(indices)))


def lookups(embs: list[nn.Embedding], indices: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[emb(index) for emb, index in zip(embs, indices)]``: one autograd node for all of
    them when every one is an :class:`IndexEmbedding` on its fast path."""
    fast = all(
        isinstance(e, IndexEmbedding) and not e.reference and e.max_norm is None
        and not e.sparse and e.weight.requires_grad for e in embs
    )  # fmt: skip
    if not (fast and torch.is_grad_enabled()):
        return [e(i) for e, i in zip(embs, indices, strict=True)]
    paddings = tuple(e.padding_idx for e in embs)
    return list(_MultiLookup.apply(paddings, *(e.weight for e in embs), *indices))


def use_reference_ops(module: nn.Module, on: bool = True) -> None:
    """Switch every submodule with a ``reference`` flag (embeddings, DIN's activation unit)
    to PyTorch's reference ops (``on``) or back to the fast ones: the same function, slower;
    for throughput benchmarks and equivalence checks."""
    for sub in module.modules():
        if hasattr(sub, "reference"):
            sub.reference = on


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabulary sizes (index 0 included) a model needs to build its embeddings."""

    n_users: int
    n_items: int
    user_attr_sizes: tuple[int, ...]
    item_attr_sizes: tuple[int, ...]
    n_genres: int
    history_len: int
    n_counters: int = len(COUNTER_NAMES)

    @classmethod
    def from_features(cls, f: CTRFeatures) -> FeatureSpec:
        return cls(
            n_users=f.n_users + 1,
            n_items=f.n_items + 1,
            user_attr_sizes=tuple(f.user_attr_sizes),
            item_attr_sizes=tuple(f.item_attr_sizes),
            n_genres=f.n_genres,
            history_len=f.history_len,
            n_counters=_dense_width(f),
        )


def _dense_width(f: CTRFeatures) -> int:
    """The width of the dense input the features carry (the counters, plus any column a
    caller appended, e.g. benchmarks/consumers.py's knowledge-affinity score)."""
    train = f.arrays.get("train", {}) if isinstance(f.arrays, dict) else {}
    counters = train.get("counters")
    return int(counters.shape[1]) if getattr(counters, "ndim", 0) == 2 else len(COUNTER_NAMES)


class Knowledge(NamedTuple):
    """Adapted knowledge for a batch: vectors (B, k) / (B, L, k), missing flags (B,) / (B, L)."""

    user: torch.Tensor
    item: torch.Tensor
    history: torch.Tensor
    user_missing: torch.Tensor
    item_missing: torch.Tensor
    history_missing: torch.Tensor


class _PooledLookup(torch.autograd.Function):
    """sum_l weight[index[b, l]] * w[b, l], (B, E), with ``w`` constant: its backward is one
    ``index_add_`` of the (B * L) weighted row gradients into the table."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        weight: torch.Tensor,
        index: torch.Tensor,
        w: torch.Tensor,
        padding_idx: int | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(index, w)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx  # type: ignore[attr-defined]
        rows = weight.index_select(0, index.reshape(-1)).view(*index.shape, weight.shape[1])
        return rows.mul_(w.unsqueeze(-1)).sum(1)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None]:
        index, w = ctx.saved_tensors  # type: ignore[attr-defined]
        per_row = (w.unsqueeze(-1) * grad.unsqueeze(1)).view(-1, grad.shape[-1])
        out = grad.new_zeros(ctx.rows, grad.shape[-1])  # type: ignore[attr-defined]
        out.index_add_(0, index.reshape(-1), per_row)
        if ctx.padding_idx is not None:  # type: ignore[attr-defined]
            out[ctx.padding_idx] = 0.0  # type: ignore[attr-defined]
        return out, None, None, None


def pooled_lookup(emb: nn.Embedding, index: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, E) = sum_l emb(index)[:, l] * w[:, l] (``w`` (B, L) constant), without the
    (B, L, E) gradient of the rows."""
    if torch.is_grad_enabled() and emb.weight.requires_grad:
        return _PooledLookup.apply(emb.weight, index, w, emb.padding_idx)
    rows = emb.weight.index_select(0, index.reshape(-1)).view(*index.shape, -1)
    return (rows * w.unsqueeze(-1)).sum(1)


class Inputs:
    """What the input layer hands a backbone: ``fields`` (B, F, E), ``dense`` (B, D) the
    standardised counters, ``history`` (B, L, E), ``history_mask`` (B, L) bool (True where a
    real interaction), ``target`` (B, E) the target item embedding.

    ``history`` is built when first read; :meth:`history_mean` (what the pooling backbones
    read) can be computed without it (``mean``: a function giving the same values)."""

    __slots__ = ("fields", "dense", "history_mask", "target", "_history", "_mean")

    def __init__(
        self,
        fields: torch.Tensor,
        dense: torch.Tensor,
        history: torch.Tensor | Callable[[], torch.Tensor],
        history_mask: torch.Tensor,
        target: torch.Tensor,
        mean: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.fields, self.dense, self.history_mask, self.target = (
            fields, dense, history_mask, target
        )  # fmt: skip
        self._history = history
        self._mean = mean

    @property
    def history(self) -> torch.Tensor:
        if callable(self._history):
            self._history = self._history()
        return self._history

    def history_mean(self) -> torch.Tensor:
        """(B, E) mean of the real interactions' embeddings (zeros for an empty history)."""
        if self._mean is not None and callable(self._history):
            return self._mean()
        return masked_mean(self.history, self.history_mask)


class CTRInputLayer(nn.Module):
    """Embeds a batch (see :meth:`CTRFeatures.tensors`) plus optional knowledge.

    ``reference = True``: the history (B, L, E) is always built and pooled as it is (the
    reference ops); otherwise only when a backbone reads it.

    ``knowledge_dropout``: in training, each row's knowledge is dropped with this probability
    (the row then sees exactly what the model without knowledge sees).
    """

    reference: bool = False

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int,
        knowledge_dim: int = 0,
        knowledge_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        e = embedding_dim
        self.knowledge_dim = knowledge_dim
        self.knowledge_dropout = knowledge_dropout
        self.user = IndexEmbedding(spec.n_users, e, padding_idx=0)
        self.item = IndexEmbedding(spec.n_items, e, padding_idx=0)
        self.user_attrs = nn.ModuleList(IndexEmbedding(n, e) for n in spec.user_attr_sizes)
        self.item_attrs = nn.ModuleList(IndexEmbedding(n, e) for n in spec.item_attr_sizes)
        self.genres = IndexEmbedding(spec.n_genres, e, padding_idx=0)
        # 0 pad, 1 not clicked, 2 clicked
        self.history_label = IndexEmbedding(3, e, padding_idx=0)
        self.n_fields = 3 + len(spec.user_attr_sizes) + len(spec.item_attr_sizes)
        self.dense_dim = spec.n_counters
        for emb in self.modules():
            if isinstance(emb, nn.Embedding):
                nn.init.normal_(emb.weight, std=0.01)
        if knowledge_dim:
            self.user_proj = nn.Linear(knowledge_dim, e)
            self.item_proj = nn.Linear(knowledge_dim, e)
            for proj in (self.user_proj, self.item_proj):  # closed at the start
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    def _keep(self, missing: torch.Tensor) -> torch.Tensor:
        """1 where a row's knowledge is present (and not dropped), as (..., 1)."""
        keep = 1.0 - missing
        if self.training and self.knowledge_dropout:
            rows = keep.shape[0]
            drop = torch.rand(rows, device=keep.device) < self.knowledge_dropout
            keep = keep * (~drop).float().view(rows, *([1] * (keep.dim() - 1)))
        return keep.unsqueeze(-1)

    def forward(self, batch: dict[str, torch.Tensor], knowledge: Knowledge | None) -> Inputs:
        embs = [self.user, self.item, *self.user_attrs, *self.item_attrs]
        ids = [batch["user"], batch["item"], *batch["user_attrs"].unbind(1)]
        user, target, *attrs = lookups(embs, ids + list(batch["item_attrs"].unbind(1)))
        history_k: torch.Tensor | None = None  # the knowledge term of the history
        if self.knowledge_dim:
            if knowledge is None:
                raise ValueError("this model was built with knowledge; pass it")
            keep = self._keep(torch.stack([knowledge.user_missing, knowledge.item_missing], 1))
            user = user + self.user_proj(knowledge.user) * keep[:, 0]
            target = target + self.item_proj(knowledge.item) * keep[:, 1]
            hist_keep = self._keep(knowledge.history_missing)
            history_k = self.item_proj(knowledge.history) * hist_keep
        fields = [user, target, *attrs]
        genres = batch["genres"]
        if self.reference:
            g_mask = (genres > 0).unsqueeze(-1).float()
            fields.append((self.genres(genres) * g_mask).sum(1) / g_mask.sum(1).clamp(min=1.0))
        else:  # the same mean, pooled in the lookup
            g_mask = (genres > 0).float()
            fields.append(pooled_lookup(self.genres, genres, g_mask / g_mask.sum(1, True).clamp(1)))
        mask = batch["history_label"] > 0

        def history() -> torch.Tensor:
            seq = self.item(batch["history"]) + self.history_label(batch["history_label"])
            return seq if history_k is None else seq + history_k

        def mean() -> torch.Tensor:
            return self._history_mean(batch, mask, history_k)

        return Inputs(
            fields=torch.stack(fields, dim=1),
            dense=batch["counters"],
            history=history() if self.reference else history,
            history_mask=mask,
            target=target,
            mean=None if self.reference else mean,
        )

    def _history_mean(
        self, batch: dict[str, torch.Tensor], mask: torch.Tensor, history_k: torch.Tensor | None
    ) -> torch.Tensor:
        """masked_mean(history, mask) without the (B, L, E) history: the item rows pooled
        with weights mask / count in one lookup, the label embeddings as (B, 3) label counts
        times their 3 rows, the knowledge term (if any) pooled as it is."""
        m = mask.float()
        count = m.sum(1, keepdim=True).clamp_(min=1.0)
        w = m / count
        items = pooled_lookup(self.item, batch["history"], w)
        labels = batch["history_label"]
        share = w.new_zeros(len(w), self.history_label.num_embeddings).scatter_add_(1, labels, w)
        out = items + share @ self.history_label.weight
        if history_k is not None:
            out = out + (history_k * w.unsqueeze(-1)).sum(1)
        return out


class CTRModel(nn.Module):
    """Backbone base class: builds the shared input layer; subclasses implement ``logit``."""

    config_class: type[ModelConfig] = ModelConfig
    reference: bool = False  # True: the backbone's reference ops (:func:`use_reference_ops`)

    def __init__(self, spec: FeatureSpec, config: ModelConfig, knowledge_dim: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.inputs = CTRInputLayer(
            spec, config.embedding_dim, knowledge_dim, config.knowledge_dropout
        )
        self.wide = nn.Linear(self.inputs.dense_dim, 1)  # the counters' linear term
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
        """Logits, shape (B,): the backbone's plus the wide term over the counters."""
        inputs = self.inputs(batch, knowledge)
        return self.logit(inputs, batch) + self.wide(inputs.dense).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L, E) over L where mask (B, L) is True; zeros for empty rows."""
    m = mask.unsqueeze(-1).float()
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class FirstOrder(nn.Module):
    """First-order term of the FM family: user and item biases (the counters' linear term is
    the base class's ``wide``)."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.user_bias = IndexEmbedding(spec.n_users, 1, padding_idx=0)
        self.item_bias = IndexEmbedding(spec.n_items, 1, padding_idx=0)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, inputs: Inputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1) first-order logit."""
        user, item = lookups([self.user_bias, self.item_bias], [batch["user"], batch["item"]])
        return user + item
