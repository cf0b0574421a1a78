"""HLLM-style user tower: a small transformer over the user's last N item embeddings.

The item embeddings are frozen inputs (text embeddings, tuned or not). The tower maps the
sequence to one user vector in the same space, trained on next-item prediction with an
InfoNCE over the warm catalogue (every item with a training-time interaction; cold items
are never negatives, so nothing is learnt against them). The user vector is L2-normalised,
so it can query the item embedding view in Feast directly (u2i retrieval).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kar.artifacts import prepare_folder, read_manifest, write_manifest
from kar.errors import KarError

WEIGHTS = "user_tower.pt"
CONFIG = "user_tower.json"
ITEM_VECTORS = "item_vectors.npy"  # the item vectors the tower was trained to read


@dataclass(frozen=True)
class TowerConfig:
    """Size and training of the user tower."""

    max_len: int = 20  # the last N items read
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    temperature: float = 0.05
    epochs: int = 8
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    samples_per_epoch: int | None = None  # a random subset of the next-item samples per epoch


def _module(dim: int, cfg: TowerConfig) -> Any:
    import torch
    from torch import nn

    class UserTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(dim, cfg.d_model)
            self.pos = nn.Embedding(cfg.max_len, cfg.d_model)  # position counted from the end
            layer = nn.TransformerEncoderLayer(
                cfg.d_model,
                cfg.heads,
                2 * cfg.d_model,
                cfg.dropout,
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.d_model)
            self.out = nn.Linear(cfg.d_model, dim)

        def forward(self, seq: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            """seq (B, L, dim) left-padded, valid (B, L) bool -> user vectors (B, dim)."""
            width = seq.shape[1]
            from_end = torch.arange(width - 1, -1, -1, device=seq.device)
            x = self.inp(seq) + self.pos(from_end)[None]
            x = x * valid[..., None]
            # pads are never attended to (each row's last position is always real)
            x = self.encoder(x, src_key_padding_mask=~valid)
            return nn.functional.normalize(self.out(self.norm(x[:, -1])), dim=1)

    return UserTower()


def left_pad(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """(B, W) int64 rows of the last ``max_len`` items of each history, right-aligned, as
    item index + 1 (0 = padding); W = the longest kept history (at least 1). The input
    layout of the user tower and of SASRec (:mod:`kar.embedding.sasrec`)."""
    width = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.zeros((len(histories), width), dtype=np.int64)
    for r, hist in enumerate(histories):
        tail = np.asarray(hist[-width:], dtype=np.int64)
        if len(tail):
            out[r, width - len(tail) :] = tail + 1
    return out


def _batch(vectors: Any, histories: Sequence[np.ndarray], max_len: int) -> tuple[Any, Any]:
    """Left-padded (B, L, dim) inputs and (B, L) validity of the last ``max_len`` items."""
    import torch

    rows = left_pad(histories, max_len)
    valid = rows > 0
    valid_t = torch.from_numpy(valid)
    empty = ~valid_t.any(dim=1)
    valid_t[empty, -1] = True  # an empty history reads one zero vector
    seq = vectors[torch.from_numpy(np.maximum(rows - 1, 0))] * torch.from_numpy(valid)[..., None]
    return seq, valid_t


@dataclass
class UserTower:
    """A trained tower and the item vectors it reads (rows = catalogue item indices)."""

    KIND: ClassVar[str] = "user_tower"  # an artifact (kar.artifacts)
    config: TowerConfig
    module: Any
    item_vectors: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, score
    best_epoch: int = 0
    seconds: float = 0.0

    def user_vectors(self, histories: Sequence[np.ndarray], batch: int = 1024) -> np.ndarray:
        """(n, dim) L2-normalised user vectors, one per history (item indices, oldest first)."""
        import torch

        vectors = torch.from_numpy(self.item_vectors)
        self.module.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(histories), batch):
                seq, valid = _batch(vectors, histories[start : start + batch], self.config.max_len)
                out.append(self.module(seq, valid).numpy())
        dim = self.item_vectors.shape[1]
        return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)

    def save(self, directory: Path) -> Path:
        """Write the weights, the item vectors it reads, its config and the manifest
        (:mod:`kar.artifacts`)."""
        import torch

        directory = prepare_folder(directory)
        torch.save(self.module.state_dict(), directory / WEIGHTS)
        np.save(directory / ITEM_VECTORS, self.item_vectors, allow_pickle=False)
        meta = {
            "config": asdict(self.config),
            "dim": int(self.item_vectors.shape[1]),
            "history": self.history,
            "best_epoch": self.best_epoch,
        }
        (directory / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        write_manifest(directory, self.KIND, 1, files=[WEIGHTS, ITEM_VECTORS, CONFIG])
        return directory

    @classmethod
    def load(cls, directory: Path, item_vectors: np.ndarray | None = None) -> UserTower:
        """Read a folder written by :meth:`save`; ``item_vectors``: read these instead of
        the saved ones (e.g. the catalogue's vectors after new items were embedded)."""
        import torch

        directory = Path(directory)
        read_manifest(directory, cls.KIND, (CONFIG, WEIGHTS))
        if item_vectors is None:
            if not (directory / ITEM_VECTORS).is_file():
                raise KarError(f"user tower folder {directory} lacks {ITEM_VECTORS}")
            item_vectors = np.load(directory / ITEM_VECTORS, allow_pickle=False)
        meta = json.loads((directory / CONFIG).read_text())
        if int(meta["dim"]) != item_vectors.shape[1]:
            raise KarError(
                f"user tower in {directory} reads {meta['dim']}-dim items, "
                f"got {item_vectors.shape[1]}-dim vectors"
            )
        cfg = TowerConfig(**meta["config"])
        module = _module(int(meta["dim"]), cfg)
        module.load_state_dict(torch.load(directory / WEIGHTS, weights_only=True))
        return cls(
            cfg, module, item_vectors.astype(np.float32), meta["history"], meta["best_epoch"]
        )


def training_samples(
    sequences: Sequence[np.ndarray], max_len: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """(histories, targets): every position t >= 1 of every sequence, with its last items."""
    histories, targets = [], []
    for seq in sequences:
        for t in range(1, len(seq)):
            histories.append(seq[max(0, t - max_len) : t])
            targets.append(int(seq[t]))
    return histories, np.array(targets, dtype=np.int64)


def train_user_tower(
    item_vectors: np.ndarray,
    sequences: Sequence[np.ndarray],
    warm_items: np.ndarray,
    config: TowerConfig | None = None,
    *,
    evaluate: Callable[[UserTower], float] | None = None,
    progress: bool = True,
) -> UserTower:
    """Train on next-item prediction over training-time ``sequences`` (item indices, time
    order). ``warm_items``: bool mask of the catalogue items that may be negatives.
    ``evaluate`` (validation score, higher is better) picks the best epoch."""
    import torch

    cfg = config or TowerConfig()
    if item_vectors.ndim != 2 or len(warm_items) != len(item_vectors):
        raise KarError("item_vectors must be (n_items, dim) and warm_items (n_items,)")
    torch.manual_seed(cfg.seed)
    vectors = np.asarray(item_vectors, dtype=np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    histories, targets = training_samples(sequences, cfg.max_len)
    if len(targets) < 2:
        raise KarError("the user tower needs sequences with at least 2 interactions")
    warm_idx = np.flatnonzero(warm_items)
    position = np.full(len(vectors), -1, dtype=np.int64)
    position[warm_idx] = np.arange(len(warm_idx))
    if (position[targets] < 0).any():
        raise KarError("a training target is not a warm item (warm_items must cover them)")
    vectors_t = torch.from_numpy(vectors)
    catalogue = vectors_t[torch.from_numpy(warm_idx)]
    module = _module(vectors.shape[1], cfg)
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tower = UserTower(cfg, module, vectors)
    best_state, best_score = None, -np.inf
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    per_epoch = min(len(targets), cfg.samples_per_epoch or len(targets))
    steps = int(np.ceil(per_epoch / cfg.batch_size))
    bar: Any = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        bar.start()
    try:
        for epoch in range(cfg.epochs):
            task = (
                bar.add_task(f"user tower epoch {epoch + 1}/{cfg.epochs}", total=steps)
                if bar
                else None
            )
            module.train()
            order = rng.permutation(len(targets))[:per_epoch]
            losses = []
            for s in range(steps):
                rows = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                seq, valid = _batch(vectors_t, [histories[i] for i in rows], cfg.max_len)
                users = module(seq, valid)
                logits = users @ catalogue.T / cfg.temperature
                loss = torch.nn.functional.cross_entropy(
                    logits, torch.from_numpy(position[targets[rows]])
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                if task is not None:
                    bar.update(task, advance=1)
            score = evaluate(tower) if evaluate is not None else float(epoch)
            tower.history.append({"loss": float(np.mean(losses)), "score": float(score)})
            if score > best_score:
                best_score, tower.best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    finally:
        if bar is not None:
            bar.stop()
    if best_state is not None:
        module.load_state_dict(best_state)
    tower.seconds = time.perf_counter() - started
    return tower
