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
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from kar.artifacts import torch_save_atomically
from kar.embedding.embedder import ItemEmbedder
from kar.errors import DataValidationError, KarError

if TYPE_CHECKING:
    import torch

    from kar.encoding.cache import VectorCache

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


def load_tuned(
    directory: Path, threads: int = 1, cache: VectorCache | None = None
) -> ItemEmbedder | ProjectedEmbedder:
    """The embedder a finished :func:`tune_embeddings` run wrote to ``directory``; ``cache``
    keeps the frozen base model's vectors of the head methods (a tuned model's own vectors
    are never cached: its id does not change when it is tuned again)."""
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
        meta["base_model"],
        pooling=meta["pooling"],
        max_length=meta["max_length"],
        threads=threads,
        cache=cache,
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


def _checked_pairs(config: TuneConfig, texts: Mapping[str, str], pairs: pl.DataFrame) -> Any:
    """``pairs`` (cut to ``max_pairs``) after checking the method, columns and items."""
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
    return pairs


class _Trainee:
    """What tuning trains: the embedder's own model (``encoder``) or a head over its frozen
    vectors of the items (``projection``, ``mlp``)."""

    def __init__(
        self,
        embedder: ItemEmbedder,
        config: TuneConfig,
        texts: list[str],
        base_vectors: np.ndarray | None,
    ) -> None:
        import torch

        self.embedder, self.method = embedder, config.method
        self.head: Any = None
        self.frozen: Any = None
        self.token_ids: list[list[int]] = []
        self.rows = {text: k for k, text in enumerate(texts)}  # text -> its frozen row
        if config.method == "encoder":
            embedder.cache = None  # the model changes under its model_id: nothing to cache
            embedder.load()
            self.token_ids = embedder.tokenize(texts)
            self.params = _trainable(embedder.model, config.train_layers)
            return
        if base_vectors is None:
            base_vectors = embedder.embed(texts)
        expected = (len(texts), embedder.dim)
        if base_vectors.shape != expected:
            raise KarError(f"base_vectors has shape {base_vectors.shape}, expected {expected}")
        self.frozen = torch.from_numpy(np.asarray(base_vectors, dtype=np.float32))
        self.head = make_head(config.method, self.frozen.shape[1], config.hidden)
        self.params = list(self.head.parameters())

    @property
    def module(self) -> Any:
        """The torch module whose weights change."""
        return self.embedder.model if self.head is None else self.head

    def vectors(self, idx: np.ndarray) -> torch.Tensor:
        """Normalised vectors of the items at rows ``idx``, with gradients."""
        import torch

        if self.head is None:
            return self.embedder.forward(self.embedder.pad([self.token_ids[i] for i in idx]))
        return torch.nn.functional.normalize(self.head(self.frozen[torch.from_numpy(idx)]), dim=1)

    def embed(self, batch_texts: Sequence[str]) -> np.ndarray:
        """The current embedding function (for validation)."""
        import torch

        if self.head is None:
            return self.embedder.embed(batch_texts)
        if all(t in self.rows for t in batch_texts):
            rows = torch.tensor([self.rows[t] for t in batch_texts], dtype=torch.long)
            with torch.inference_mode():  # the item texts: their frozen vectors are at hand
                vectors = self.head.eval()(self.frozen[rows])
                return torch.nn.functional.normalize(vectors, dim=1).numpy()
        return ProjectedEmbedder(self.embedder, self.head, self.method).embed(batch_texts)

    def save(self, directory: Path, hidden: int) -> None:
        """Write the trained weights: the model folder, or the head file."""
        if self.head is None:
            self.embedder.save(directory / MODEL_DIR)
            return
        state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        torch_save_atomically({"state": state, "hidden": hidden}, directory / HEAD)


@dataclass
class _Run:
    """One tuning run: the trainee, its optimiser, the position, and the checkpoint file."""

    trainee: _Trainee
    optimizer: Any
    config: TuneConfig
    signature: dict[str, Any]
    path: Path
    state: dict[str, Any] = field(
        default_factory=lambda: {
            "epoch": 0, "step": 0, "global_step": 0, "losses": [], "scores": [], "best": None,
        }
    )  # fmt: skip
    ran: int = 0  # steps run by this call

    def resume(self) -> int:
        """Load the checkpoint of the same run, if any; the global step it resumes at."""
        import torch

        if not self.path.is_file():
            return 0
        saved = torch.load(self.path, weights_only=False)
        if saved.get("signature") != self.signature:
            return 0
        self.trainee.module.load_state_dict(saved["trainable"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state = saved["state"]
        return int(self.state["global_step"])

    def checkpoint(self) -> None:
        torch_save_atomically(
            {
                "signature": self.signature,
                "trainable": self.trainee.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "state": self.state,
            },
            self.path,
        )

    def step(self, a: np.ndarray, b: np.ndarray) -> float:
        """One optimisation step on the pairs ``(a[i], b[i])``; its loss."""
        import torch

        unique, inverse = np.unique(np.r_[a, b], return_inverse=True)
        emb = self.trainee.vectors(unique)
        loss = info_nce(
            emb[torch.from_numpy(inverse[: len(a)])],
            emb[torch.from_numpy(inverse[len(a) :])],
            torch.from_numpy(a),
            torch.from_numpy(b),
            self.config.temperature,
        )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.ran += 1
        return float(loss.item())

    def end_epoch(self, evaluate: Callable[[EmbedFn], float] | None, directory: Path) -> None:
        """Score the epoch, keep it when it is the best, checkpoint."""
        state, epoch = self.state, self.state["epoch"]
        self.trainee.module.eval()
        state["losses"].append(float(np.mean(state["epoch_losses"])))
        score = evaluate(self.trainee.embed) if evaluate is not None else float(epoch)
        state["scores"].append(float(score))
        if state["best"] is None or score > state["scores"][state["best"]]:
            state["best"] = epoch
            self.trainee.save(directory, self.config.hidden)
        state.update(epoch=epoch + 1, step=0, epoch_losses=[])
        self.checkpoint()

    def result(self, started: float, resumed_from: int) -> dict[str, Any]:
        state = self.state
        return {
            "method": self.config.method,
            "base_model_id": self.trainee.embedder.model_id,
            "steps": state["global_step"],
            "epochs_done": state["epoch"],
            "best_epoch": -1 if state["best"] is None else state["best"],
            "losses": list(state["losses"]),
            "scores": list(state["scores"]),
            "seconds": time.perf_counter() - started,
            "resumed_from": resumed_from,
        }


def _progress_bar(progress: bool) -> Any:
    if not progress:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        "{task.fields[loss]}",
    )
    bar.start()
    return bar


def _train(
    run: _Run,
    pairs: tuple[np.ndarray, np.ndarray],
    evaluate: Callable[[EmbedFn], float] | None,
    directory: Path,
    stop_after_steps: int | None,
    bar: Any,
) -> bool:
    """Run the remaining epochs; True when stopped early (``stop_after_steps``)."""
    config, state = run.config, run.state
    pa, pb = pairs
    steps_per_epoch = int(np.ceil(len(pa) / config.batch_size))
    while state["epoch"] < config.epochs:
        epoch = state["epoch"]
        order = np.random.default_rng(config.seed + epoch).permutation(len(pa))
        task = None
        if bar is not None:
            description = f"tuning epoch {epoch + 1}/{config.epochs}"
            task = bar.add_task(
                description, total=steps_per_epoch, completed=state["step"], loss=""
            )
        run.trainee.module.train()
        epoch_losses: list[float] = state.setdefault("epoch_losses", [])
        while state["step"] < steps_per_epoch:
            if stop_after_steps is not None and run.ran >= stop_after_steps:
                run.checkpoint()
                return True
            step = state["step"]
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            epoch_losses.append(run.step(pa[rows], pb[rows]))
            state["step"] += 1
            state["global_step"] += 1
            if task is not None:
                bar.update(task, advance=1, loss=f"loss {np.mean(epoch_losses[-20:]):.3f}")
            if state["step"] % config.checkpoint_every == 0:
                run.checkpoint()
        run.end_epoch(evaluate, directory)
    return False


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
    (rows in sorted id order) when already computed. A finished run with the same inputs
    is not repeated.
    """
    import torch

    config = config or TuneConfig()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pairs = _checked_pairs(config, texts, pairs)
    signature = {
        "config": asdict(config),
        "base_model_id": embedder.model_id,
        "data": _pairs_hash(pairs, texts),
    }
    if (directory / META).is_file():
        meta = json.loads((directory / META).read_text())
        if meta.get("signature") == signature:
            return TuneResult(directory=directory, **meta["result"])
    torch.manual_seed(config.seed)
    item_ids = sorted(texts)
    index = {item: i for i, item in enumerate(item_ids)}
    pa = np.array([index[i] for i in pairs["item_a"].to_list()])
    pb = np.array([index[i] for i in pairs["item_b"].to_list()])
    trainee = _Trainee(embedder, config, [texts[i] for i in item_ids], base_vectors)
    optimizer = torch.optim.AdamW(
        trainee.params, lr=config.learning_rate(), weight_decay=config.weight_decay
    )
    run = _Run(trainee, optimizer, config, signature, directory / CHECKPOINT)
    resumed_from = run.resume()
    started, bar = time.perf_counter(), _progress_bar(progress)
    try:
        stopped = _train(run, (pa, pb), evaluate, directory, stop_after_steps, bar)
    finally:
        if bar is not None:
            bar.stop()
    result = run.result(started, resumed_from)
    if stopped:
        return TuneResult(directory=directory, **result)
    meta = {
        "method": config.method,
        "pooling": embedder.pooling,
        "max_length": embedder.max_length,
        "base_model": base_model or str(embedder.model_dir),
        "signature": signature,
        "result": result,
    }
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    (directory / CHECKPOINT).unlink(missing_ok=True)
    return TuneResult(directory=directory, **result)
