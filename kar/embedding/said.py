"""SAID (Hu et al., WWW 2024): LLM-aligned item embeddings learnt by regenerating item text.

A projection module maps each item's ID to ``k`` soft tokens in a frozen LLM's
token-embedding space (an ID embedding table, then a small MLP to ``k x hidden``). It is
trained so the frozen LLM, reading the soft tokens as a prefix, reproduces the item's text:
next-token loss over the text tokens only. The LLM's weights never change (no gradients);
only the projection learns. The learnt soft tokens (their mean, or all of them flattened),
less the catalogue mean and L2-normalised, are the item vectors a light sequential
recommender reads (kar's user tower), so serving needs no LLM and no long token sequences.

The LLM is the bundled SmolLM2-135M by default (:mod:`kar.generation.model_files`). Training
is resumable: projection, optimiser and position are saved to ``checkpoint`` every
``checkpoint_every`` batches and at each epoch's end; a rerun with the same texts and
settings continues from there (more ``epochs`` continue a finished run), and a finished run
only recomputes the vectors from the saved projection (no LLM). The cost is measured on the
first batch of a call and printed. Items are rows: the ID of ``texts[i]`` is ``i``, so a
new item needs training (SAID is not zero-shot: its ID has no row yet).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from kar.artifacts import torch_save_atomically
from kar.errors import DataValidationError, KarError

log = logging.getLogger(__name__)

Output = Literal["mean", "flat"]
ID_STD = 0.01  # initial spread of the ID embeddings: items start alike, training parts them
# settings that change what is learnt (a checkpoint with other values is not resumed; the
# LLM is in the signature by its id); epochs is not one: more epochs continue a finished run
_LEARNT = ("soft_tokens", "id_dim", "hidden", "lr", "batch_size", "max_text_tokens", "seed")


@dataclass(frozen=True)
class SAIDConfig:
    """Hyper-parameters of SAID's projection and its training."""

    soft_tokens: int = 4  # k: soft tokens per item (the LLM reads them as a prefix)
    id_dim: int = 64  # width of the ID embedding table
    hidden: int = 256  # width of the MLP from the ID embedding to k x the LLM's hidden size
    lr: float = 3e-3  # AdamW learning rate (constant)
    epochs: int = 5  # passes over the items
    batch_size: int = 8  # items per step
    max_text_tokens: int = 32  # text tokens per item (the end-of-text token included)
    seed: int = 0  # initialisation and batch order
    model: str | None = None  # the frozen LLM: None / "smollm2" (bundled) or a local HF folder
    output: Output = "mean"  # item vector: the mean of the k soft tokens, or all of them
    checkpoint_every: int = 20  # batches between checkpoints (and at each epoch's end)
    threads: int = 1  # torch CPU threads


@dataclass
class SAIDResult:
    """The item vectors of a SAID run, and how training went."""

    vectors: np.ndarray  # float32 (n_items, d), rows L2-normalised, in the order of the texts
    model_id: str  # the frozen LLM
    epochs_done: int
    steps: int  # optimisation steps in all (this call and the ones it resumed)
    losses: list[float] = field(default_factory=list)  # mean next-token loss per epoch
    first_loss: float | None = None  # loss of the first batch, before any update
    resumed_from: int = 0  # global step this call resumed at (0: fresh)
    seconds: float = 0.0  # this call
    seconds_per_epoch: float | None = None  # measured by this call (None: nothing trained)


class SAIDProjection(nn.Module):
    """Item ID -> ``k`` soft tokens: an embedding table, then ``Linear-GELU-Linear``."""

    def __init__(self, n_items: int, config: SAIDConfig, llm_hidden: int) -> None:
        super().__init__()
        self.k, self.llm_hidden = config.soft_tokens, llm_hidden
        self.ids = nn.Embedding(n_items, config.id_dim)
        nn.init.normal_(self.ids.weight, std=ID_STD)
        self.mlp = nn.Sequential(
            nn.Linear(config.id_dim, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.soft_tokens * llm_hidden),
        )

    def start_from(self, tokens: torch.Tensor) -> None:
        """Start every item's soft tokens at ``tokens`` (k, hidden): real token embeddings,
        so the frozen LLM first reads an ordinary prefix (prompt tuning's vocabulary start),
        plus the MLP's output scaled to half their spread."""
        with torch.no_grad():
            current = float(self(torch.arange(self.ids.num_embeddings)).std())
            self.mlp[-1].weight.mul_(0.5 * float(tokens.std()) / max(current, 1e-12))
            self.mlp[-1].bias.copy_(tokens.reshape(-1))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """(batch,) item rows -> (batch, k, LLM hidden size) soft tokens."""
        return self.mlp(self.ids(rows)).view(len(rows), self.k, self.llm_hidden)


@dataclass(frozen=True)
class FrozenLLM:
    """The LLM SAID trains against: eval mode, no parameter requires gradients."""

    model: Any
    tokenizer: Any
    model_id: str


def load_frozen_llm(model: str | None = None, threads: int = 1) -> FrozenLLM:
    """The frozen LLM ``model`` (None / ``"smollm2"``: the bundled SmolLM2-135M; or a local
    HF folder) in float32, with ``threads`` torch CPU threads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kar.generation.model_files import model_name_for, resolve_model

    torch.set_num_threads(threads)
    folder = resolve_model(model)
    llm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    llm.requires_grad_(False)
    llm.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return FrozenLLM(llm, tokenizer, model_name_for(model, "float32"))


def tokenize(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Each text's token ids, cut to ``max_tokens - 1``, then the end-of-text token."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [row[: max_tokens - 1] + ([eos] if eos is not None else []) for row in ids]


def text_loss(model: Any, soft: torch.Tensor, tokens: Sequence[list[int]]) -> torch.Tensor:
    """Mean next-token loss of the frozen causal LM ``model`` over ``tokens`` (one list per
    row), each row read after its ``soft`` tokens (batch, k, hidden); gradients reach ``soft``
    only.

    Right padding needs no attention mask (causal: a pad never precedes a real token), and
    logits are computed only where a real text token is predicted.
    """
    width = max(len(row) for row in tokens)
    ids = torch.zeros((len(tokens), width), dtype=torch.long)
    for i, row in enumerate(tokens):
        ids[i, : len(row)] = torch.tensor(row)
    real = torch.arange(width)[None, :] < torch.tensor([len(r) for r in tokens])[:, None]
    with torch.no_grad():
        text = model.get_input_embeddings()(ids[:, :-1])  # the last token predicts nothing
    inputs = torch.cat([soft.to(text.dtype), text], dim=1)
    hidden = model.base_model(inputs_embeds=inputs, use_cache=False).last_hidden_state
    k = soft.shape[1]
    predictors = hidden[:, k - 1 :]  # position k-1+j predicts text token j
    logits = model.get_output_embeddings()(predictors[real])
    return nn.functional.cross_entropy(logits.float(), ids[real])


def _signature(config: SAIDConfig, texts: Sequence[str], model_id: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode() + b"\x1e")
    learnt = {name: getattr(config, name) for name in _LEARNT}
    return {"config": learnt, "model_id": model_id, "texts": digest.hexdigest()[:16]}


@dataclass
class _Run:
    """One SAID training run: projection, optimiser, position, and its checkpoint file."""

    projection: SAIDProjection
    optimizer: Any
    signature: dict[str, Any]
    path: Path | None
    state: dict[str, Any] = field(
        default_factory=lambda: {
            "epoch": 0, "step": 0, "global_step": 0, "losses": [], "epoch_losses": [],
            "first_loss": None,
        }
    )  # fmt: skip

    def checkpoint(self) -> None:
        """Write projection, optimiser and position (atomically: a kill never leaves half)."""
        if self.path is None:
            return
        saved = {
            "signature": self.signature,
            "projection": self.projection.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": self.state,
            "llm_hidden": self.projection.llm_hidden,
        }
        torch_save_atomically(saved, self.path)

    def resume(self, saved: dict[str, Any] | None) -> int:
        """Continue from ``saved`` (a checkpoint of this run, or None); the step resumed at."""
        if saved is None:
            return 0
        self.projection.load_state_dict(saved["projection"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state = saved["state"]
        return int(self.state["global_step"])


def _saved_run(path: Path | None, signature: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when it belongs to the same run, else None."""
    if path is None or not path.is_file():
        return None
    saved = torch.load(path, weights_only=False)
    if saved.get("signature") == signature:
        return saved
    log.info("%s is a checkpoint of other item texts or settings: SAID starts afresh", path)
    return None


def item_vectors(projection: SAIDProjection, output: Output = "mean") -> np.ndarray:
    """float32 (n_items, d) item vectors from the projection's soft tokens: their mean
    (d = LLM hidden size) or all of them flattened (d = k x hidden), minus the catalogue's
    mean (what every item's tokens share: the text format, not the item), L2-normalised."""
    if output not in ("mean", "flat"):
        raise KarError(f"unknown SAID output {output!r}; expected mean | flat")
    with torch.no_grad():
        soft = projection.eval()(torch.arange(projection.ids.num_embeddings))
        vectors = soft.mean(dim=1) if output == "mean" else soft.flatten(1)
        if len(vectors) > 1:
            vectors = vectors - vectors.mean(dim=0, keepdim=True)
        return nn.functional.normalize(vectors, dim=1).numpy().astype(np.float32)


class _Meter:
    """The progress bar (when wanted), the cost line, and the time spent training."""

    def __init__(self, progress: bool, n_items: int, config: SAIDConfig) -> None:
        self.n_items, self.config = n_items, config
        self.per_epoch = -(-n_items // config.batch_size)
        self.steps, self.seconds = 0, 0.0
        self.bar: Any = None
        self.task: Any = None
        self.label = ""
        if progress:
            from rich.progress import Progress

            self.bar = Progress()
            self.bar.start()

    def epoch(self, epoch: int, step: int) -> None:
        self.label = f"SAID epoch {epoch + 1}/{self.config.epochs}"
        if self.bar is not None:
            self.task = self.bar.add_task(self.label, total=self.per_epoch, completed=step)

    def step(self, seconds: float, loss: float, epochs_left: float) -> None:
        self.steps += 1
        self.seconds += seconds
        if self.steps == 1:
            self.say(self.cost_line(seconds, epochs_left))
        if self.task is not None:
            self.bar.update(self.task, advance=1, description=f"{self.label} loss {loss:.3f}")

    def cost_line(self, first: float, epochs_left: float) -> str:
        """What training will cost, from the first batch's time on this machine."""
        per_epoch = first * self.per_epoch
        return (
            f"SAID: {self.n_items} items, {self.per_epoch} batches of {self.config.batch_size} "
            f"per epoch; first batch {first:.2f} s -> ~{per_epoch / 60:.1f} min per epoch, "
            f"~{per_epoch * epochs_left / 60:.1f} min for the {epochs_left:g} epoch(s) to go "
            f"({self.config.threads} thread(s))"
        )

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line)
        else:
            log.info(line)

    def seconds_per_epoch(self) -> float | None:
        return self.seconds / self.steps * self.per_epoch if self.steps else None

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _train(
    run: _Run,
    llm: Any,
    tokens: list[list[int]],
    config: SAIDConfig,
    meter: _Meter,
    stop_after_steps: int | None,
) -> bool:
    """Run the remaining epochs; True when stopped early (``stop_after_steps``), checkpointed."""
    state, size, ran = run.state, config.batch_size, 0
    while state["epoch"] < config.epochs:
        order = np.random.default_rng(config.seed + state["epoch"]).permutation(len(tokens))
        meter.epoch(state["epoch"], state["step"])
        run.projection.train()
        while state["step"] < meter.per_epoch:
            if stop_after_steps is not None and ran >= stop_after_steps:
                run.checkpoint()
                return True
            rows = order[state["step"] * size : (state["step"] + 1) * size]
            left = config.epochs - state["epoch"] - state["step"] / meter.per_epoch
            started = time.perf_counter()
            loss = text_loss(llm, run.projection(torch.from_numpy(rows)), [tokens[r] for r in rows])
            run.optimizer.zero_grad()
            loss.backward()
            run.optimizer.step()
            value, ran = float(loss.item()), ran + 1
            if state["first_loss"] is None:
                state["first_loss"] = value
            state["epoch_losses"].append(value)
            state["step"] += 1
            state["global_step"] += 1
            meter.step(time.perf_counter() - started, value, left)
            if state["step"] % config.checkpoint_every == 0:
                run.checkpoint()
        state["losses"].append(float(np.mean(state["epoch_losses"])))
        state.update(epoch=state["epoch"] + 1, step=0, epoch_losses=[])
        run.checkpoint()
    return False


def _check(texts: Sequence[str], config: SAIDConfig) -> None:
    if not texts:
        raise KarError("SAID needs at least one item text")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataValidationError(f"item text {i} is empty", row=i + 1, field="text")
    limits = {"soft_tokens": 1, "id_dim": 1, "hidden": 1, "epochs": 0, "batch_size": 1,
              "max_text_tokens": 2, "checkpoint_every": 1, "threads": 1}  # fmt: skip
    for name, low in limits.items():
        if getattr(config, name) < low:
            raise KarError(f"SAIDConfig.{name} must be >= {low}, got {getattr(config, name)}")
    if config.lr <= 0:
        raise KarError(f"SAIDConfig.lr must be > 0, got {config.lr}")


def _projection(
    n_items: int,
    config: SAIDConfig,
    saved: dict[str, Any] | None,
    llm: FrozenLLM | None,
    tokens: list[list[int]],
) -> SAIDProjection:
    """A new projection (seeded; started from the embeddings of ``k`` tokens drawn from the
    item texts), or one to load ``saved`` into."""
    torch.manual_seed(config.seed)
    if saved is not None:
        return SAIDProjection(n_items, config, int(saved["llm_hidden"]))
    if llm is None:
        raise KarError("a new SAID projection needs the LLM")
    embeddings = llm.model.get_input_embeddings()
    projection = SAIDProjection(n_items, config, embeddings.embedding_dim)
    pool = torch.tensor([t for row in tokens for t in row])
    drawn = torch.randint(len(pool), (config.soft_tokens,))
    projection.start_from(embeddings.weight[pool[drawn]].detach())
    return projection


def fit_said(
    texts: Sequence[str],
    config: SAIDConfig | None = None,
    checkpoint: Path | None = None,
    *,
    progress: bool = True,
    stop_after_steps: int | None = None,
    llm: FrozenLLM | None = None,
) -> SAIDResult:
    """Train SAID's projection on ``texts`` (row i is item i) with the LLM frozen; the item
    vectors and how training went. ``checkpoint``: a file to resume from and save to.
    ``stop_after_steps``: stop (checkpointed) after this many steps of this call (tests).
    ``llm``: the frozen LLM when already loaded (:func:`load_frozen_llm` of ``config.model``).
    """
    config = config or SAIDConfig()
    _check(texts, config)
    started = time.perf_counter()
    path = Path(checkpoint) if checkpoint is not None else None
    from kar.generation.model_files import model_name_for

    model_id = model_name_for(config.model, "float32")
    signature = _signature(config, texts, model_id)
    saved = _saved_run(path, signature)
    finished = saved is not None and saved["state"]["epoch"] >= config.epochs
    if llm is None and not finished:
        llm = load_frozen_llm(config.model, config.threads)
    tokens = tokenize(llm.tokenizer, texts, config.max_text_tokens) if llm else []
    projection = _projection(len(texts), config, saved, llm, tokens)
    optimizer = torch.optim.AdamW(projection.parameters(), lr=config.lr, weight_decay=0.0)
    run = _Run(projection, optimizer, signature, path)
    resumed_from = run.resume(saved)
    meter = _Meter(progress and not finished, len(texts), config)
    try:
        if llm is not None and not finished:
            _train(run, llm.model, tokens, config, meter, stop_after_steps)
    finally:
        meter.stop()
    state = run.state
    return SAIDResult(
        vectors=item_vectors(projection, config.output),
        model_id=model_id,
        epochs_done=int(state["epoch"]),
        steps=int(state["global_step"]),
        losses=list(state["losses"]),
        first_loss=state["first_loss"],
        resumed_from=resumed_from,
        seconds=time.perf_counter() - started,
        seconds_per_epoch=meter.seconds_per_epoch(),
    )


def train_said(
    texts: Sequence[str],
    config: SAIDConfig,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """float32 (n_items, d) SAID item vectors of ``texts`` (row i is item i), L2-normalised;
    resumable through ``checkpoint`` (a file). See :func:`fit_said` for the training record."""
    return fit_said(texts, config, checkpoint, progress=progress).vectors
