"""NoteLLM-style collaborative contrastive tuning of item embeddings (resumable).

Positives are co-occurring item pairs (:mod:`kar.embedding.cooccur`); negatives are the
other items of the batch; the loss is a symmetric InfoNCE with a temperature. Two methods:

- ``encoder``: the whole text encoder (or its top ``train_layers`` layers) is fine-tuned
  (all-MiniLM-L6-v2: 22 M parameters; about 10 minutes an epoch of 15k pairs on one core of
  a 2-core machine): the most freedom, for when there is CPU (or a GPU) to spare.
- ``projection``: the model is frozen and a square linear head (initialised to identity) is
  trained on its vectors: the cheap choice for a decoder LLM too big to tune on a CPU.
- ``mlp``: the model is frozen and a residual MLP head ``x + W2 gelu(W1 x)`` (``W2`` starts at
  zero, so tuning starts from the raw vectors) is trained: far more freedom than a linear map
  for seconds of CPU time, and a cold item still goes through the same function of its text.
  The default.

A checkpoint (trainable weights, optimiser, position) is written every ``checkpoint_every``
steps and at each epoch's end; a rerun with the same inputs resumes from it. With an
``evaluate`` callback (validation score of an embedding function, higher is better) the
best epoch is kept, otherwise the last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from kar.embedding.embedder import ItemEmbedder
from kar.errors import DataValidationError, KarError

if TYPE_CHECKING:
    import torch

Method = Literal["encoder", "projection", "mlp"]
CHECKPOINT = "checkpoint.pt"
META = "tuned.json"
MODEL_DIR = "model"
HEAD = "head.pt"
EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameters of the contrastive tuning."""

    method: Method = "mlp"
    epochs: int = 8
    batch_size: int = 64
    lr: float | None = None  # None: 3e-5 (encoder), 1e-3 (projection, mlp)
    hidden: int = 1024  # mlp head width
    temperature: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 50
    max_pairs: int | None = None  # keep the best-scored pairs only
    train_layers: int | None = None  # encoder: tune only the top N transformer layers (None: all)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (3e-5 if self.method == "encoder" else 1e-3)


@dataclass
class TuneResult:
    """Where the tuned embedder is, and how tuning went."""

    directory: Path
    method: Method
    base_model_id: str
    steps: int
    epochs_done: int
    best_epoch: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    scores: list[float] = field(default_factory=list)  # validation score per epoch
    seconds: float = 0.0
    resumed_from: int = 0  # global step the run resumed at (0: fresh)


def _pairs_hash(pairs: pl.DataFrame, texts: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for a, b in pairs.select("item_a", "item_b").iter_rows():
        digest.update(f"{a}\x1f{b}\x1e".encode())
    for key in sorted(texts):
        digest.update(f"{key}\x1f{texts[key]}\x1e".encode())
    return digest.hexdigest()[:16]


def info_nce(
    a: torch.Tensor, b: torch.Tensor, ids_a: torch.Tensor, ids_b: torch.Tensor, temperature: float
) -> Any:
    """Symmetric InfoNCE of normalised rows ``a[i]`` ~ ``b[i]``; the other rows of the batch
    are the negatives, except those holding the row's own anchor or positive item (a repeat
    of either in the batch is not a negative: masked out)."""
    import torch

    n = len(a)
    off = ~torch.eye(n, dtype=torch.bool)
    logits = a @ b.T / temperature
    # row i = (anchor a_i, positive b_i) against column b_j; transposed: (b_i, a_i) against a_j
    mask_ab = ((ids_b[None, :] == ids_b[:, None]) | (ids_b[None, :] == ids_a[:, None])) & off
    mask_ba = ((ids_a[None, :] == ids_a[:, None]) | (ids_a[None, :] == ids_b[:, None])) & off
    target = torch.arange(n)
    loss_ab = torch.nn.functional.cross_entropy(logits.masked_fill(mask_ab, float("-inf")), target)
    loss_ba = torch.nn.functional.cross_entropy(
        logits.T.masked_fill(mask_ba, float("-inf")), target
    )
    return (loss_ab + loss_ba) / 2


def make_head(kind: str, dim: int, hidden: int = 1024) -> Any:
    """The trainable head over frozen vectors: ``projection`` (linear, identity at start) or
    ``mlp`` (residual, the identity at start)."""
    import torch
    from torch import nn

    if kind == "projection":
        head = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            head.weight.copy_(torch.eye(dim))
        return head

    class ResidualMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Linear(dim, hidden)
            self.down = nn.Linear(hidden, dim)
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.down(nn.functional.gelu(self.up(x)))

    return ResidualMLP()


class ProjectedEmbedder:
    """A frozen embedder followed by a trained head (:func:`make_head`); rows L2-normalised."""

    def __init__(self, base: ItemEmbedder, head: Any, kind: str) -> None:
        self.base = base
        self.head = head.eval()
        digest = hashlib.sha256()
        for value in head.state_dict().values():
            digest.update(value.detach().numpy().tobytes())
        self.model_id = f"{base.model_id}+{kind}@{digest.hexdigest()[:8]}"
        self.dim = base.dim

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        import torch

        with torch.inference_mode():
            raw = torch.from_numpy(self.base.embed(texts, progress=progress))
            return torch.nn.functional.normalize(self.head(raw), dim=1).numpy()


def load_tuned(directory: Path, threads: int = 1) -> ItemEmbedder | ProjectedEmbedder:
    """The embedder a finished :func:`tune_embeddings` run wrote to ``directory``."""
    directory = Path(directory)
    meta_path = directory / META
    if not meta_path.is_file():
        raise KarError(f"{directory} holds no tuned embedder ({META} missing): run the tuning")
    meta = json.loads(meta_path.read_text())
    if meta["method"] == "encoder":
        return ItemEmbedder(
            directory / MODEL_DIR,
            pooling=meta["pooling"],
            max_length=meta["max_length"],
            threads=threads,
        )
    import torch

    base = ItemEmbedder(
        meta["base_model"], pooling=meta["pooling"], max_length=meta["max_length"], threads=threads
    )
    saved = torch.load(directory / HEAD, weights_only=True)
    head = make_head(meta["method"], base.dim, int(saved["hidden"]))
    head.load_state_dict(saved["state"])
    return ProjectedEmbedder(base, head, meta["method"])


def _trainable(model: Any, top_layers: int | None) -> list[Any]:
    """Parameters to tune: all, or those of the top ``top_layers`` transformer layers (and
    anything after them, e.g. a final norm or pooler); the rest are frozen."""
    named = list(model.named_parameters())
    if top_layers is None:
        return [p for _, p in named]
    layer_of = [re.search(r"\.layers?\.(\d+)\.", f".{name}") for name, _ in named]
    numbers = [int(m.group(1)) for m in layer_of if m]
    if not numbers:
        raise KarError("train_layers: the model has no numbered transformer layers")
    first = max(numbers) + 1 - top_layers
    seen_top, keep = False, []
    for (_, param), match in zip(named, layer_of, strict=True):
        if match:
            seen_top = int(match.group(1)) >= first
        param.requires_grad_(seen_top)
        if seen_top:
            keep.append(param)
    return keep


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def tune_embeddings(
    embedder: ItemEmbedder,
    texts: Mapping[str, str],
    pairs: pl.DataFrame,
    directory: Path,
    config: TuneConfig | None = None,
    *,
    base_model: str | None = None,
    evaluate: Callable[[EmbedFn], float] | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
    base_vectors: np.ndarray | None = None,
) -> TuneResult:
    """Tune ``embedder`` on ``pairs`` (item_a, item_b[, score]) of items in ``texts``.

    Writes the tuned embedder to ``directory`` (load it with :func:`load_tuned`).
    ``base_model``: how to name the base model in the metadata (projection reloads it).
    ``stop_after_steps``: stop (checkpointed) after this many steps of this call, to test
    resuming. ``base_vectors``: for the head methods, the model's vectors of the items
    (rows in sorted id order) when already computed.
    """
    import torch

    config = config or TuneConfig()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if config.method not in ("encoder", "projection", "mlp"):
        raise KarError(
            f"unknown tuning method {config.method!r}; expected encoder | projection | mlp"
        )
    for column in ("item_a", "item_b"):
        if column not in pairs.columns:
            raise DataValidationError(f"pairs frame lacks column {column!r}", field=column)
    if config.max_pairs is not None:
        pairs = pairs.head(config.max_pairs)
    unknown = pairs.filter(
        ~pl.col("item_a").is_in(list(texts)) | ~pl.col("item_b").is_in(list(texts))
    )
    if unknown.height:
        row = unknown.row(0, named=True)
        raise DataValidationError(
            f"pair ({row['item_a']!r}, {row['item_b']!r}) names an item without text",
            field="item_a",
        )
    if pairs.height < 2:
        raise KarError(f"contrastive tuning needs at least 2 pairs, got {pairs.height}")
    torch.manual_seed(config.seed)
    item_ids = sorted(texts)
    index = {item: i for i, item in enumerate(item_ids)}
    pa = np.array([index[i] for i in pairs["item_a"].to_list()])
    pb = np.array([index[i] for i in pairs["item_b"].to_list()])
    token_ids: list[list[int]] = []
    signature = {
        "config": asdict(config),
        "base_model_id": embedder.model_id,
        "data": _pairs_hash(pairs, texts),
    }

    frozen: torch.Tensor | None = None
    head: torch.nn.Module | None = None
    if config.method == "encoder":
        embedder.load()
        token_ids = embedder.tokenize([texts[i] for i in item_ids])
        params = _trainable(embedder.model, config.train_layers)
    else:
        if base_vectors is None:
            base_vectors = embedder.embed([texts[i] for i in item_ids])
        expected = (len(item_ids), embedder.dim)
        if base_vectors.shape != expected:
            raise KarError(f"base_vectors has shape {base_vectors.shape}, expected {expected}")
        frozen = torch.from_numpy(np.asarray(base_vectors, dtype=np.float32))
        head = make_head(config.method, frozen.shape[1], config.hidden)
        params = list(head.parameters())
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate(), weight_decay=config.weight_decay
    )

    def trainable_state() -> dict[str, Any]:
        return embedder.model.state_dict() if head is None else head.state_dict()

    def load_trainable(state: dict[str, Any]) -> None:
        (embedder.model if head is None else head).load_state_dict(state)

    steps_per_epoch = int(np.ceil(len(pa) / config.batch_size))
    state = {"epoch": 0, "step": 0, "global_step": 0, "losses": [], "scores": [], "best": None}
    ckpt_path = directory / CHECKPOINT
    resumed_from = 0
    if (directory / META).is_file():
        meta = json.loads((directory / META).read_text())
        if meta.get("signature") == signature:
            return TuneResult(directory=directory, **meta["result"])
    if ckpt_path.is_file():
        saved = torch.load(ckpt_path, weights_only=False)
        if saved.get("signature") == signature:
            load_trainable(saved["trainable"])
            optimizer.load_state_dict(saved["optimizer"])
            state = saved["state"]
            resumed_from = state["global_step"]

    def checkpoint() -> None:
        _atomic_save(
            {
                "signature": signature,
                "trainable": trainable_state(),
                "optimizer": optimizer.state_dict(),
                "state": state,
            },
            ckpt_path,
        )

    def vectors(idx: np.ndarray) -> torch.Tensor:
        if head is None:
            return embedder.forward(embedder.pad([token_ids[i] for i in idx]))
        assert frozen is not None
        return torch.nn.functional.normalize(head(frozen[torch.from_numpy(idx)]), dim=1)

    frozen_rows = {texts[i]: k for k, i in enumerate(item_ids)}

    def embed_fn(batch_texts: Sequence[str]) -> np.ndarray:
        if head is None:
            return embedder.embed(batch_texts)
        if frozen is not None and all(t in frozen_rows for t in batch_texts):
            rows = torch.tensor([frozen_rows[t] for t in batch_texts], dtype=torch.long)
            with torch.inference_mode():  # the item texts: their frozen vectors are at hand
                return torch.nn.functional.normalize(head.eval()(frozen[rows]), dim=1).numpy()
        return ProjectedEmbedder(embedder, head, config.method).embed(batch_texts)

    def save_best() -> None:
        if head is None:
            embedder.save(directory / MODEL_DIR)
        else:
            state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            _atomic_save({"state": state, "hidden": config.hidden}, directory / HEAD)

    started, ran = time.perf_counter(), 0
    progress_bar: Any = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        progress_bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            "{task.fields[loss]}",
        )
        progress_bar.start()
    try:
        while state["epoch"] < config.epochs:
            epoch = state["epoch"]
            order = np.random.default_rng(config.seed + epoch).permutation(len(pa))
            task = None
            if progress_bar is not None:
                task = progress_bar.add_task(
                    f"tuning epoch {epoch + 1}/{config.epochs}",
                    total=steps_per_epoch,
                    completed=state["step"],
                    loss="",
                )
            (embedder.model if head is None else head).train()
            epoch_losses: list[float] = state.setdefault("epoch_losses", [])
            while state["step"] < steps_per_epoch:
                if stop_after_steps is not None and ran >= stop_after_steps:
                    checkpoint()
                    raise _Stopped
                rows = order[
                    state["step"] * config.batch_size : (state["step"] + 1) * config.batch_size
                ]
                a, b = pa[rows], pb[rows]
                unique, inverse = np.unique(np.r_[a, b], return_inverse=True)
                emb = vectors(unique)
                loss = info_nce(
                    emb[torch.from_numpy(inverse[: len(a)])],
                    emb[torch.from_numpy(inverse[len(a) :])],
                    torch.from_numpy(a),
                    torch.from_numpy(b),
                    config.temperature,
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                epoch_losses.append(loss.item())
                state["step"] += 1
                state["global_step"] += 1
                ran += 1
                if task is not None:
                    progress_bar.update(
                        task, advance=1, loss=f"loss {np.mean(epoch_losses[-20:]):.3f}"
                    )
                if state["step"] % config.checkpoint_every == 0:
                    checkpoint()
            (embedder.model if head is None else head).eval()
            state["losses"].append(float(np.mean(epoch_losses)))
            score = evaluate(embed_fn) if evaluate is not None else float(epoch)
            state["scores"].append(float(score))
            if state["best"] is None or score > state["scores"][state["best"]]:
                state["best"] = epoch
                save_best()
            state.update(epoch=epoch + 1, step=0, epoch_losses=[])
            checkpoint()
    except _Stopped:
        return TuneResult(
            directory=directory,
            method=config.method,
            base_model_id=embedder.model_id,
            steps=state["global_step"],
            epochs_done=state["epoch"],
            best_epoch=-1 if state["best"] is None else state["best"],
            losses=list(state["losses"]),
            scores=list(state["scores"]),
            seconds=time.perf_counter() - started,
            resumed_from=resumed_from,
        )
    finally:
        if progress_bar is not None:
            progress_bar.stop()
    result = {
        "method": config.method,
        "base_model_id": embedder.model_id,
        "steps": state["global_step"],
        "epochs_done": state["epoch"],
        "best_epoch": state["best"],
        "losses": state["losses"],
        "scores": state["scores"],
        "seconds": time.perf_counter() - started,
        "resumed_from": resumed_from,
    }
    meta = {
        "method": config.method,
        "pooling": embedder.pooling,
        "max_length": embedder.max_length,
        "base_model": base_model or str(embedder.model_dir),
        "signature": signature,
        "result": result,
    }
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    ckpt_path.unlink(missing_ok=True)
    return TuneResult(directory=directory, **result)


class _Stopped(Exception):
    """Raised inside the loop to stop after ``stop_after_steps`` (checkpoint written)."""
