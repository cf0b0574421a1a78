"""SASRec (Kang & McAuley, ICDM 2018): a causal self-attention next-item model, with a
pluggable item embedding so the same model reads IDs, frozen text vectors, or both.

The model follows the paper: item embedding (times sqrt(hidden)) plus a learned positional
embedding, dropout, ``blocks`` pre-layer-norm blocks (causal multi-head self-attention,
point-wise two-layer feed-forward, residuals, dropout), a final layer norm; the score of
item i at position t is the dot product of the position's output with item i's embedding,
the same table as the input (shared). Training reads every training-time sequence with a
loss at every position: full softmax cross-entropy over the warm items (``loss="ce"``) or
the paper's binary cross-entropy with one sampled negative per position (``"bce"``).

Item embeddings (``SASRecConfig.items``):

- ``"id"``: a learned row per item (the baseline). Items without a training interaction
  (cold) have no row worth the name, so the scorer never retrieves them;
- ``"text"``: a learned projection (linear or a 2-layer MLP) of frozen text item vectors
  (MiniLM, SmolLM2, SAID, ...), standardised per dimension; every item, cold ones included,
  is scored through its text;
- ``"text+id"``: the text projection plus an ID row for warm items only (cold items have
  none: their ID row is zero). ``id_dropout`` zeroes a random part of the warm items' ID
  rows at each step so the text part alone learns to rank, which is what cold items get.

Cold items (``warm`` is False: no interaction in the training sequences) are never a
target nor a negative: nothing is learnt against items the model could not have known.
Sequences are item indices (0-based, time order); internally 0 is the padding row.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kar.embedding.evaluate import Events, Scorer, id_only
from kar.embedding.tower import left_pad
from kar.errors import KarError

ItemInput = Literal["id", "text", "text+id"]


@dataclass(frozen=True)
class SASRecConfig:
    """Size and training of SASRec (defaults: the paper's, with full softmax)."""

    max_len: int = 200  # the last N items read; longer training sequences are windowed
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    items: ItemInput = "id"
    text_layers: int = 1  # text projection: 1 = linear, 2 = MLP with one hidden layer
    id_dropout: float = 0.0  # "text+id": share of warm ID rows zeroed at each training step
    id_min_count: int = 1  # "text+id": items with fewer training interactions: text only
    loss: Literal["ce", "bce"] = "ce"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    eval_every: int = 5  # epochs between validation scores
    patience: int = 4  # validation scores without improvement before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        if self.items not in ("id", "text", "text+id"):
            raise KarError(f"items must be 'id', 'text' or 'text+id', got {self.items!r}")
        if self.loss not in ("ce", "bce"):
            raise KarError(f"loss must be 'ce' or 'bce', got {self.loss!r}")
        if self.hidden % self.heads or self.max_len < 2 or self.text_layers not in (1, 2):
            raise KarError("hidden must divide by heads, max_len >= 2, text_layers 1 or 2")


def _item_table(
    n_items: int, text: np.ndarray | None, counts: np.ndarray, cfg: SASRecConfig
) -> Any:
    """Module whose ``forward(train)`` returns the (n_items + 1, hidden) item table; row 0 is
    the padding row (zero)."""
    import torch
    from torch import nn

    class ItemTable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ids = nn.Embedding(n_items + 1, cfg.hidden) if "id" in cfg.items else None
            self.proj: nn.Module | None = None
            if self.ids is not None and cfg.items == "id":
                nn.init.normal_(self.ids.weight, std=cfg.hidden**-0.5)
            elif self.ids is not None:  # "text+id": the ID rows start at 0, residuals on text
                nn.init.zeros_(self.ids.weight)
            # rows that may carry an ID: warm items (index + 1); padding and cold rows stay 0
            least = 1 if cfg.items == "id" else max(1, cfg.id_min_count)
            id_rows = torch.zeros(n_items + 1, 1)
            id_rows[1:, 0] = torch.from_numpy((counts >= least).astype(np.float32))
            self.register_buffer("id_rows", id_rows)
            real = torch.ones(n_items + 1, 1)
            real[0, 0] = 0.0
            self.register_buffer("real", real)
            if "text" in cfg.items:
                assert text is not None
                std = np.asarray(text, dtype=np.float32)
                std = (std - std.mean(axis=0)) / max(float(std.std()), 1e-9)
                pad = np.zeros((1, std.shape[1]), dtype=np.float32)
                self.register_buffer("text", torch.from_numpy(np.concatenate([pad, std])))
                dim = std.shape[1]
                self.proj = (
                    nn.Linear(dim, cfg.hidden)
                    if cfg.text_layers == 1
                    else nn.Sequential(
                        nn.Linear(dim, 2 * cfg.hidden),
                        nn.GELU(),
                        nn.Linear(2 * cfg.hidden, cfg.hidden),
                    )
                )

        def forward(self) -> torch.Tensor:
            table = None
            if self.proj is not None:
                table = self.proj(self.text) * self.real
            if self.ids is not None:
                keep = self.id_rows
                if self.training and self.proj is not None and cfg.id_dropout > 0:
                    keep = keep * (torch.rand_like(keep) >= cfg.id_dropout)
                ids = self.ids.weight * keep
                table = ids if table is None else table + ids
            return table

    return ItemTable()


def _module(n_items: int, text: np.ndarray | None, counts: np.ndarray, cfg: SASRecConfig) -> Any:
    """The SASRec network: ``forward(seq)`` (B, L) padded item rows (0 = pad, left-padded)
    -> ((B, L, hidden) outputs, (n_items + 1, hidden) item table)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm = nn.LayerNorm(cfg.hidden, eps=1e-8)
            self.attn = nn.MultiheadAttention(
                cfg.hidden, cfg.heads, dropout=cfg.dropout, batch_first=True
            )
            self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=1e-8)
            self.ffn = nn.Sequential(
                nn.Linear(cfg.hidden, cfg.hidden),
                nn.Dropout(cfg.dropout),
                nn.ReLU(),
                nn.Linear(cfg.hidden, cfg.hidden),
                nn.Dropout(cfg.dropout),
            )

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            query = self.attn_norm(x)  # as the paper's code: normalised queries, raw keys
            x = query + self.attn(query, x, x, attn_mask=mask, need_weights=False)[0]
            x = self.ffn_norm(x)
            return x + self.ffn(x)

    class SASRecNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items = _item_table(n_items, text, counts, cfg)
            self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.blocks))
            self.norm = nn.LayerNorm(cfg.hidden, eps=1e-8)

        def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            table = self.items()
            width = seq.shape[1]
            # the last slot is always position max_len - 1, as in a max_len-padded array
            slots = torch.arange(cfg.max_len - width, cfg.max_len, device=seq.device)
            real = (seq > 0).unsqueeze(-1)
            x = self.drop(table[seq] * cfg.hidden**0.5 + self.pos(slots)[None]) * real
            mask = _attention_mask(seq, cfg.heads)
            for block in self.blocks:
                x = block(x, mask) * real
            return self.norm(x), table

    return SASRecNet()


def _attention_mask(seq: Any, heads: int) -> Any:
    """(B * heads, L, L) bool, True = blocked: the future and the padding (each position
    always sees itself, so a padding row never has every key blocked)."""
    import torch

    width = seq.shape[1]
    future = torch.ones(width, width, dtype=torch.bool, device=seq.device).triu(1)
    blocked = future[None] | (seq == 0)[:, None, :]
    blocked &= ~torch.eye(width, dtype=torch.bool, device=seq.device)[None]
    return blocked.repeat_interleave(heads, dim=0)


@dataclass
class SASRec:
    """A trained SASRec: ``scores`` of every catalogue item after each history."""

    config: SASRecConfig
    module: Any
    warm: np.ndarray  # (n_items,) bool: the item is in a training sequence
    history: list[dict[str, float]] = field(default_factory=list)  # per scored epoch
    best_epoch: int = 0  # 1-based epoch kept (0: the last one, no validation)
    seconds: float = 0.0

    @property
    def scores_cold(self) -> bool:
        """Whether cold items get a real score (through their text)."""
        return "text" in self.config.items

    def scores(self, histories: Sequence[np.ndarray], batch: int = 256) -> np.ndarray:
        """(n, n_items) next-item scores after each history (item indices, oldest first);
        an ID-only model gives cold items -inf."""
        scores = np.zeros((len(histories), len(self.warm)), dtype=np.float32)
        for rows in _length_batches([len(h) for h in histories], batch):
            scores[rows] = self._outputs([histories[i] for i in rows], last_only=True)
        return scores if self.scores_cold else id_only(scores, self.warm)

    def position_scores(self, sequence: np.ndarray) -> np.ndarray:
        """(len, n_items) scores after every prefix of one sequence (one causal pass)."""
        return self._outputs([sequence], last_only=False)[0]

    def _outputs(self, histories: Sequence[np.ndarray], last_only: bool) -> np.ndarray:
        import torch

        seq = torch.from_numpy(left_pad(histories, self.config.max_len))
        self.module.eval()
        with torch.inference_mode():
            out, table = self.module(seq)
            if last_only:
                out = out[:, -1]
            return (out @ table[1:].T).float().numpy()


def sasrec_scorer(model: SASRec) -> Scorer:
    """A :data:`kar.embedding.evaluate.Scorer` reading each event's history."""

    def score(events: Events, rows: np.ndarray) -> np.ndarray:
        return model.scores([events.histories[i] for i in rows])

    return score


def _length_batches(
    lengths: Sequence[int], size: int, rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Batches of row indices of similar length (little padding); with ``rng``, ties are
    broken at random and the batches come in a random order."""
    noise = rng.random(len(lengths)) if rng is not None else np.zeros(len(lengths))
    order = np.lexsort((noise, np.asarray(lengths)))
    batches = [order[start : start + size] for start in range(0, len(order), size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def training_windows(
    sequences: Sequence[np.ndarray], max_len: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) windows: targets are the inputs shifted by one; a sequence longer
    than ``max_len + 1`` gives several windows, cut back from its end (every position of
    every training sequence is a target once)."""
    windows = []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        for end in range(len(seq) - 1, 0, -max_len):
            start = max(0, end - max_len)
            windows.append((seq[start:end], seq[start + 1 : end + 1]))
    return windows


def _loss(module: Any, windows: list, warm_idx: Any, cfg: SASRecConfig, rng: Any) -> Any:
    """Mean loss over every real position of a batch of windows."""
    import torch
    import torch.nn.functional as F

    seq = torch.from_numpy(left_pad([w[0] for w in windows], cfg.max_len))
    target = torch.from_numpy(left_pad([w[1] for w in windows], cfg.max_len)) - 1
    out, table = module(seq)
    real = target >= 0
    out, target = out[real], target[real]
    if cfg.loss == "ce":
        logits = out @ table[1:][warm_idx].T
        position = torch.full((table.shape[0] - 1,), -1, dtype=torch.long)
        position[warm_idx] = torch.arange(len(warm_idx))
        return F.cross_entropy(logits, position[target])
    negative = warm_idx[torch.from_numpy(rng.integers(len(warm_idx), size=len(target)))]
    pos = (out * table[target + 1]).sum(-1)
    neg = (out * table[negative + 1]).sum(-1)
    return F.binary_cross_entropy_with_logits(
        pos, torch.ones_like(pos)
    ) + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))


def _seed(seed: int) -> Any:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train_sasrec(
    sequences: Sequence[np.ndarray],
    n_items: int,
    config: SASRecConfig | None = None,
    *,
    text_vectors: np.ndarray | None = None,
    evaluate: Callable[[SASRec], float] | None = None,
    progress: bool = True,
) -> SASRec:
    """Train on training-time ``sequences`` (item indices < ``n_items``, time order).
    ``text_vectors`` (n_items, dim) feed the "text" item inputs. ``evaluate`` (a validation
    score, higher is better) runs every ``eval_every`` epochs: the best epoch is kept and
    training stops after ``patience`` scores without improvement. Torch threads: the
    caller's."""
    import torch

    cfg = config or SASRecConfig()
    windows = training_windows(sequences, cfg.max_len)
    if not windows:
        raise KarError("SASRec needs sequences with at least 2 interactions")
    if "text" in cfg.items and (text_vectors is None or len(text_vectors) != n_items):
        raise KarError(f"items={cfg.items!r} needs text_vectors of shape ({n_items}, dim)")
    counts = np.bincount(
        np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]), minlength=n_items
    )
    warm = counts > 0
    rng = _seed(cfg.seed)
    model = SASRec(cfg, _module(n_items, text_vectors, counts, cfg), warm)
    optimizer = torch.optim.Adam(
        model.module.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    warm_idx = torch.from_numpy(np.flatnonzero(warm))
    best_state, best_score, stale, started = None, -np.inf, 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.module.train()
        losses = []
        for rows in _length_batches([len(w[0]) for w in windows], cfg.batch_size, rng):
            loss = _loss(model.module, [windows[i] for i in rows], warm_idx, cfg, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if evaluate is None or (epoch % cfg.eval_every and epoch != cfg.epochs):
            continue
        score = float(evaluate(model))
        model.history.append({"epoch": epoch, "loss": float(np.mean(losses)), "score": score})
        better = score > best_score
        if better:
            best_score, model.best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        else:
            stale += 1
        if progress:
            print(
                f"  sasrec[{cfg.items}] epoch {epoch}/{cfg.epochs} loss {np.mean(losses):.4f} "
                f"valid {score:.4f}{' *' if better else ''} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        if stale >= cfg.patience:
            break
    if best_state is not None:
        model.module.load_state_dict(best_state)
    model.seconds = time.perf_counter() - started
    return model
