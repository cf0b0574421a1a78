"""Train a backbone CTR model, optionally jointly with a knowledge adaptor (KAR's objective).

The raw knowledge encodings are fixed inputs; the adaptor and the backbone are trained end
to end on the CTR log loss. Epochs are selected on validation AUC (best epoch restored);
the test split is evaluated once, at the end.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from torch.optim import Adam

from kar.adaptor.config import AdaptorConfig
from kar.adaptor.experts import KnowledgeAdaptor, build_adaptor
from kar.errors import ConfigError
from kar.models.base import CTRModel, FeatureSpec, Knowledge, use_reference_ops
from kar.models.config import ModelConfig
from kar.models.inputs import CTRFeatures
from kar.models.metrics import auc, logloss
from kar.models.registry import get_model

if TYPE_CHECKING:
    from kar.adaptor.trained import TrainedAdaptor

EVAL_BATCH = 8192


class KARModel(nn.Module):
    """Backbone + optional adaptor; holds the fixed raw knowledge matrices as buffers."""

    def __init__(
        self,
        backbone: CTRModel,
        adaptor: KnowledgeAdaptor | None = None,
        knowledge: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adaptor = adaptor
        for name, tensor in (knowledge or {}).items():
            self.register_buffer(name, tensor, persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        know = None
        if self.adaptor is not None:
            u, i, h = batch["user_k"], batch["item_k"], batch["history_k"]
            # the adaptor runs once per distinct item of the batch (targets and histories)
            distinct, inverse = torch.unique(torch.cat([i, h.flatten()]), return_inverse=True)
            user_vec = self.adaptor.encode("user", self.user_knowledge[u])
            item_vecs = self.adaptor.encode("item", self.item_knowledge[distinct])[inverse]
            n = len(i)
            know = Knowledge(
                user=user_vec,
                item=item_vecs[:n],
                history=item_vecs[n:].view(*h.shape, -1),
                user_missing=self.user_missing[u],
                item_missing=self.item_missing[i],
                history_missing=self.item_missing[h],
            )
        return self.backbone(batch, know)

    def parameter_groups(self, config: ModelConfig) -> list[dict[str, Any]]:
        """Adam groups: embedding tables, knowledge (adaptor + projections), the rest; each
        with its own weight decay."""
        groups: dict[str, list[nn.Parameter]] = {"embedding": [], "knowledge": [], "other": []}
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        for name, param in self.named_parameters():
            if _is_knowledge_parameter(name):
                groups["knowledge"].append(param)
            elif id(param) in embeddings:
                groups["embedding"].append(param)
            else:
                groups["other"].append(param)
        decay = {
            "embedding": config.embedding_weight_decay,
            "knowledge": config.knowledge_weight_decay,
            "other": config.weight_decay,
        }
        scale = {"knowledge": config.knowledge_lr_scale}
        return [
            {"params": p, "weight_decay": decay[k], "lr": config.lr * scale.get(k, 1.0)}
            for k, p in groups.items()
            if p
        ]

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The backbone's auxiliary loss term of the last training forward pass, or None."""
        return self.backbone.auxiliary_loss()


@dataclass
class TrainResult:
    """Metrics of the restored best epoch, and the trained modules.

    ``valid_auc`` / ``test_auc`` are kar's evaluation arm: the epoch selected on validation
    (0: the start kept) after the gate. The ``ungated_*`` metrics are the knowledge model at
    its best *trained* epoch (``best_trained_epoch`` >= 1), before any fallback: the model
    whose adaptor :meth:`trained_adaptor` publishes. ``knowledge_valid_auc`` /
    ``none_valid_auc`` / ``gate_probability`` compare that model with the model without
    knowledge on validation (paired bootstrap), when one was given as ``fallback_state``.
    """

    backbone: str
    seed: int
    valid_auc: float
    valid_logloss: float
    test_auc: float
    test_logloss: float
    best_epoch: int  # 1-based; 0: the warm start was kept
    epochs_run: int
    seconds: float
    seconds_per_epoch: float  # wall seconds of the training steps (no evaluation)
    model: KARModel
    adaptor: KnowledgeAdaptor | None
    model_config: ModelConfig
    adaptor_config: AdaptorConfig | None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    # knowledge models given a fallback: False when the gate closed (the result is the
    # model without knowledge), True when the knowledge model was kept; None otherwise
    gate_open: bool | None = None
    best_trained_epoch: int | None = None  # knowledge models: best epoch >= 1 on validation
    ungated_valid_auc: float | None = None
    ungated_test_auc: float | None = None
    ungated_test_logloss: float | None = None
    knowledge_valid_auc: float | None = None  # the trained knowledge model (with a fallback)
    none_valid_auc: float | None = None  # the model without knowledge it falls back to
    gate_probability: float | None = None  # P(knowledge model beats it), paired bootstrap
    # the whole model at ``best_trained_epoch`` (knowledge models)
    trained_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    # how the configuration was chosen (``kar train``: {"point": ..., "source": ...})
    tuning: dict[str, Any] = field(default_factory=dict)
    # this process's CPU seconds of the training steps per epoch (a loaded machine's wall
    # clock counts other jobs too)
    cpu_seconds_per_epoch: float = math.nan

    @property
    def knowledge_gain(self) -> float | None:
        """Relative validation AUC gain of the trained knowledge model over no knowledge."""
        if self.knowledge_valid_auc is None or not self.none_valid_auc:
            return None
        return self.knowledge_valid_auc / self.none_valid_auc - 1.0

    def metrics(self) -> dict[str, Any]:
        keys = ("backbone", "seed", "valid_auc", "valid_logloss", "test_auc", "test_logloss")
        keys += ("best_epoch", "epochs_run", "seconds", "seconds_per_epoch")
        keys += ("gate_open", "best_trained_epoch", "ungated_valid_auc", "ungated_test_auc")
        keys += ("knowledge_valid_auc", "none_valid_auc", "gate_probability", "knowledge_gain")
        out = {k: getattr(self, k) for k in keys}
        out["knowledge_gate"] = self.model_config.knowledge_gate
        if self.tuning:
            out["tuning"] = self.tuning
        return out

    def trained_adaptor(self, encoder: str | None = None) -> TrainedAdaptor:
        """The adaptor alone, at its best trained epoch (never the untrained start), ready
        to save and export vectors."""
        from kar.adaptor.trained import TrainedAdaptor

        if self.adaptor is None or self.adaptor_config is None:
            raise ConfigError("this model was trained without knowledge: no adaptor to export")
        module = self.adaptor
        if self.trained_state is not None:
            module = copy.deepcopy(self.adaptor)
            prefix = "adaptor."
            module.load_state_dict(
                {k.removeprefix(prefix): v for k, v in self.trained_state.items()
                 if k.startswith(prefix)}
            )  # fmt: skip
        return TrainedAdaptor(
            config=self.adaptor_config,
            module=module,
            encoder=encoder,
            backbone=self.backbone,
            seed=self.seed,
            metrics=self.metrics(),
        )


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch; one torch thread (two stall on a shared 2-core box)."""
    torch.set_num_threads(1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def predict(
    model: nn.Module, tensors: dict[str, torch.Tensor], batch_size: int = EVAL_BATCH
) -> np.ndarray:
    """Click probabilities for every row of a split (eval mode, no autograd), in batches of
    ``batch_size`` rows (contiguous slices: no copies)."""
    model.eval()
    n = len(tensors["label"])
    with torch.inference_mode():
        out = [
            torch.sigmoid(model({k: v[s : s + batch_size] for k, v in tensors.items()}))
            for s in range(0, n, batch_size)
        ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(AUC, LogLoss) of ``model`` on a split."""
    labels = tensors["label"].numpy()
    probs = predict(model, tensors)
    return auc(labels, probs), logloss(labels, probs)


def evaluate_test_split(result: TrainResult, features: CTRFeatures) -> None:
    """Read the test split once for a run trained with ``evaluate_test=False`` (a trial
    chosen on validation): the selected model's test metrics and, for a knowledge model,
    the ungated ones (its best trained epoch)."""
    test = features.tensors("test")
    result.test_auc, result.test_logloss = evaluate(result.model, test)
    if result.trained_state is not None:
        trained = copy.deepcopy(result.model)
        trained.load_state_dict(result.trained_state)
        result.ungated_test_auc, result.ungated_test_logloss = evaluate(trained, test)


def build_model(
    features: CTRFeatures,
    backbone: str,
    model_config: ModelConfig | dict | None = None,
    adaptor_config: AdaptorConfig | None = None,
) -> tuple[KARModel, ModelConfig]:
    """Instantiate backbone (+ adaptor over the features' knowledge)."""
    entry = get_model(backbone)
    if isinstance(model_config, ModelConfig):
        model_config = model_config.model_dump()
    try:
        config = entry.config.model_validate(model_config or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid {backbone} config: {exc}") from exc
    spec = FeatureSpec.from_features(features)
    if adaptor_config is None:
        return KARModel(entry.model(spec, config)), config
    if not features.has_knowledge:
        raise ConfigError("an adaptor config was given but the features carry no knowledge")
    adaptor = build_adaptor(adaptor_config, features.knowledge_dim)
    know = features.knowledge_tensors()
    adaptor.fit_input_scaler(
        know["user_knowledge"][know["user_missing"] == 0],
        know["item_knowledge"][know["item_missing"] == 0],
    )
    net = entry.model(spec, config, knowledge_dim=adaptor.out_dim)
    return KARModel(net, adaptor, features.knowledge_tensors()), config


@torch.no_grad()
def fit_wide_term(model: KARModel, train: dict[str, torch.Tensor]) -> None:
    """Start the wide term where a logistic regression on the train counters ends, so every
    backbone starts from (about) the trivial baseline and learns what the counters miss."""
    from sklearn.linear_model import LogisticRegression

    labels = train["label"].numpy()
    if len(np.unique(labels)) < 2:
        return
    lr = LogisticRegression().fit(train["counters"].numpy(), labels)
    wide = model.backbone.wide
    wide.weight.copy_(torch.from_numpy(lr.coef_.astype(np.float32)))
    wide.bias.copy_(torch.from_numpy(lr.intercept_.astype(np.float32)))


@torch.no_grad()
def close_knowledge(model: KARModel, fallback_state: Mapping[str, torch.Tensor]) -> None:
    """Make ``model`` the model without knowledge: its backbone from ``fallback_state``, its
    knowledge projections zero (the adaptor's output then reaches nothing)."""
    missing, unexpected = model.load_state_dict(dict(fallback_state), strict=False)
    foreign = [k for k in missing if not _is_knowledge_parameter(k)] + list(unexpected)
    if foreign:
        raise ConfigError(f"the fallback model has other parameters: {foreign[:3]}")
    inputs = model.backbone.inputs
    for proj in (inputs.user_proj, inputs.item_proj):
        proj.weight.zero_()
        proj.bias.zero_()


def _gate(
    model: KARModel,
    fallback_state: Mapping[str, torch.Tensor],
    valid: dict[str, torch.Tensor],
    confidence: float,
    seed: int,
    win: float | None = None,
) -> bool:
    """Keep the trained knowledge model (True) or close it into the fallback (False).
    ``win``: the bootstrap probability already computed for this very model."""
    from kar.models.metrics import auc_win_probability

    if confidence <= 0:
        return True
    closed = copy.deepcopy(model)
    close_knowledge(closed, fallback_state)
    if win is None:
        labels = valid["label"].numpy()
        win = auc_win_probability(labels, predict(model, valid), predict(closed, valid), seed=seed)
    if win >= confidence:
        return True
    model.load_state_dict(closed.state_dict())
    return False


def versus_none(
    model: KARModel,
    fallback_state: Mapping[str, torch.Tensor],
    valid: dict[str, torch.Tensor],
    seed: int,
) -> tuple[float, float, float]:
    """(validation AUC of ``model``, of the model without knowledge in ``fallback_state``,
    the paired-bootstrap probability that ``model`` has the higher AUC)."""
    from kar.models.metrics import auc_win_probability

    closed = copy.deepcopy(model)
    close_knowledge(closed, fallback_state)
    labels = valid["label"].numpy()
    with_k, without = predict(model, valid), predict(closed, valid)
    win = auc_win_probability(labels, with_k, without, seed=seed)
    return auc(labels, with_k), auc(labels, without), win


def _is_knowledge_parameter(name: str) -> bool:
    """Parameters a model without knowledge does not have (adaptor, knowledge projections)."""
    return name.startswith("adaptor.") or ".user_proj." in name or ".item_proj." in name


def is_better(score: tuple[float, float], best: tuple[float, float] | None) -> bool:
    """Higher AUC wins (lower LogLoss when AUC is undefined)."""
    if best is None:
        return True
    if not (np.isnan(score[0]) or np.isnan(best[0])):
        return score[0] > best[0]
    return score[1] < best[1]


def _starting_point(
    model: CTRModel,
    backbone: str,
    train: dict[str, torch.Tensor],
    init_state: Mapping[str, torch.Tensor] | None,
) -> None:
    """Warm-start ``model`` from ``init_state`` (knowledge parameters may be missing from it),
    or without one fit the wide term on the train counters."""
    if init_state is None:
        fit_wide_term(model, train)
        return
    missing, unexpected = model.load_state_dict(dict(init_state), strict=False)
    foreign = [k for k in missing if not _is_knowledge_parameter(k)] + list(unexpected)
    if foreign:
        raise ConfigError(
            f"cannot warm-start {backbone} from a model with other parameters: {foreign[:3]}"
        )


def _gated_best(
    model: CTRModel,
    selection: EpochSelection,
    knowledge: dict[str, Any],
    fallback_state: Mapping[str, torch.Tensor] | None,
    valid: dict[str, torch.Tensor],
    knowledge_gate: float,
    seed: int,
) -> tuple[tuple[float, float], int, bool | None]:
    """(valid AUC, LogLoss), best epoch and whether the gate is open (None: no gate); a
    closed gate leaves ``model`` as the fallback model (epoch 0)."""
    best, best_epoch = selection.best, selection.best_epoch
    if fallback_state is None or model.adaptor is None:
        return best, best_epoch, None
    same = best_epoch == selection.trained_epoch  # the selected model is the trained one
    win = knowledge.get("gate_probability") if same else None
    gate_open = _gate(model, fallback_state, valid, knowledge_gate, seed, win)
    if not gate_open:
        best, best_epoch = evaluate(model, valid), 0
    return best, best_epoch, gate_open


def train_ctr(
    features: CTRFeatures,
    backbone: str,
    model_config: ModelConfig | dict | None = None,
    adaptor_config: AdaptorConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    evaluate_test: bool = True,
    init_state: Mapping[str, torch.Tensor] | None = None,
    fallback_state: Mapping[str, torch.Tensor] | None = None,
    reference: bool = False,
) -> TrainResult:
    """Train ``backbone`` (with the adaptor jointly when ``adaptor_config`` is given).

    ``evaluate_test=False`` leaves the test split unread (test metrics NaN), e.g. for the
    trials of a hyper-parameter search chosen on validation. ``init_state``: warm start from
    the state dict of a trained model without knowledge (same backbone and config): the
    knowledge model starts as that same function (its knowledge projections start at zero).
    Without it, the wide term starts from a logistic regression on the train counters. The
    starting point is epoch 0 of the selection on validation, so knowledge that does not
    help on validation leaves the model as it was. ``fallback_state`` (a model without
    knowledge, as for ``init_state``): the gate that can close; the trained knowledge model
    is kept only if it beats that model on validation with probability
    ``knowledge_gate`` (paired bootstrap), else the result is that model (knowledge off).
    Knowledge models also report, gate or not, their best *trained* epoch (>= 1): its
    ungated valid / test metrics, its adaptor (what :meth:`TrainResult.trained_adaptor`
    publishes) and, given ``fallback_state``, its validation AUC against that model's.
    ``reference``: the same training with the reference code path (PyTorch's own embedding
    backward, DIN's concatenated attention input, per-batch gathers of every tensor, the
    (B, L, E) behaviour sequence and genres pooled as tensors, ``nn.Dropout``, Adam's
    per-parameter loop): slower, for ``benchmarks/train_throughput.py``; the same model up
    to float rounding without dropout (the fast dropout draws other random numbers).
    """
    set_seed(seed)
    model, config = build_model(features, backbone, model_config, adaptor_config)
    use_reference_ops(model, reference)
    train, valid = features.tensors("train"), features.tensors("valid")
    n = len(train["label"])
    if n == 0:
        raise ConfigError("the train split is empty")
    _starting_point(model, backbone, train, init_state)
    # the starting point is epoch 0 of the selection on validation
    selection = EpochSelection.start(model, evaluate(model, valid))
    start = time.perf_counter()
    name = backbone if progress else None
    _fit_epochs(model, config, train, valid, selection, seed, name, reference)
    model.load_state_dict(selection.best_state)
    knowledge: dict[str, Any] = {}
    if model.adaptor is not None:
        knowledge = _trained_knowledge(
            model, selection, features, fallback_state, seed, evaluate_test
        )
        model.load_state_dict(selection.best_state)
    best, best_epoch, gate_open = _gated_best(
        model, selection, knowledge, fallback_state, valid, config.knowledge_gate, seed
    )
    test_auc, test_logloss = (
        evaluate(model, features.tensors("test")) if evaluate_test else (math.nan, math.nan)
    )
    epochs_run = sum(1 for row in selection.history if row["epoch"] > 0)
    return TrainResult(
        backbone=backbone,
        seed=seed,
        valid_auc=best[0],
        valid_logloss=best[1],
        test_auc=test_auc,
        test_logloss=test_logloss,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        seconds=time.perf_counter() - start,
        seconds_per_epoch=selection.train_seconds / max(epochs_run, 1),
        cpu_seconds_per_epoch=selection.train_cpu_seconds / max(epochs_run, 1),
        model=model,
        adaptor=model.adaptor,
        model_config=config,
        adaptor_config=adaptor_config,
        history=selection.history,
        gate_open=gate_open,
        **knowledge,
    )


@dataclass
class EpochSelection:
    """What the epochs leave: the best state on validation (the start, epoch 0, included)
    and the best *trained* state (epoch >= 1), with their (AUC, LogLoss) scores."""

    best: tuple[float, float]
    best_state: dict[str, torch.Tensor]
    best_epoch: int = 0
    trained: tuple[float, float] | None = None
    trained_state: dict[str, torch.Tensor] | None = None
    trained_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0

    @classmethod
    def start(cls, model: nn.Module, score: tuple[float, float]) -> EpochSelection:
        history = [{"epoch": 0, "valid_auc": score[0], "valid_logloss": score[1]}]
        return cls(best=score, best_state=copy.deepcopy(model.state_dict()), history=history)

    def update(self, epoch: int, score: tuple[float, float], model: nn.Module) -> bool:
        """Keep epoch ``epoch``'s state where it is the best so far; True if best overall."""
        improved = is_better(score, self.best)
        if improved:
            self.best, self.best_epoch = score, epoch
            self.best_state = copy.deepcopy(model.state_dict())
        if is_better(score, self.trained):
            self.trained, self.trained_epoch = score, epoch
            self.trained_state = self.best_state if improved else copy.deepcopy(model.state_dict())
        return improved


KNOWLEDGE_KEYS = ("user_k", "item_k", "history_k")  # read by the adaptor only


def epoch_batches(
    model: KARModel,
    tensors: dict[str, torch.Tensor],
    order: torch.Tensor,
    batch_size: int,
    reference: bool = False,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """(row indices, batch) per step of an epoch: the rows of ``order`` (a permutation, so
    each row once) in consecutive chunks of ``batch_size``, each batch gathered with one
    ``index_select`` per tensor the model reads (the knowledge indices only with an
    adaptor). ``reference``: every tensor gathered by advanced indexing, as before."""
    skip = () if model.adaptor is not None or reference else KNOWLEDGE_KEYS
    keys = [k for k in tensors if k not in skip]
    for idx in order.split(batch_size):
        if reference:
            yield idx, {k: v[idx] for k, v in tensors.items()}
        else:
            yield idx, {k: tensors[k].index_select(0, idx) for k in keys}


def make_optimiser(model: KARModel, config: ModelConfig, reference: bool = False) -> Adam:
    """Adam over the model's parameter groups: fused (one kernel for every parameter) where
    this PyTorch has it, else (and for ``reference``) its per-parameter loop."""
    groups = model.parameter_groups(config)
    if not reference:
        try:
            return Adam(groups, lr=config.lr, fused=True)
        except (RuntimeError, TypeError):  # no fused CPU Adam in this PyTorch
            pass
    return Adam(groups, lr=config.lr, foreach=False)


def _fit_epochs(
    model: KARModel,
    config: ModelConfig,
    train: dict[str, torch.Tensor],
    valid: dict[str, torch.Tensor],
    selection: EpochSelection,
    seed: int,
    progress_name: str | None,
    reference: bool = False,
) -> None:
    """Train up to ``max_epochs`` epochs (early stopping on validation), into ``selection``."""
    n = len(train["label"])
    optimiser = make_optimiser(model, config, reference)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=config.lr_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    stale = 0
    for epoch in range(1, config.max_epochs + 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        model.train()
        total, aux_total, with_aux = 0.0, 0.0, False
        order = torch.randperm(n, generator=generator)
        for idx, batch in epoch_batches(model, train, order, config.batch_size, reference):
            loss = loss_fn(model(batch), batch["label"])
            aux = model.auxiliary_loss()  # e.g. DIEN's next-click loss; None for most models
            if aux is not None:
                loss = loss + aux
                aux_total += aux.item() * len(idx)
                with_aux = True
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        scheduler.step()
        selection.train_seconds += time.perf_counter() - t0
        selection.train_cpu_seconds += time.process_time() - cpu0
        score = evaluate(model, valid)
        row = {"epoch": epoch, "train_loss": total / n}  # CTR loss + auxiliary term
        if with_aux:
            row["aux_loss"] = aux_total / n
        selection.history.append({**row, "valid_auc": score[0], "valid_logloss": score[1]})
        if progress_name is not None:
            from rich import print as rprint

            rprint(
                f"[{progress_name}{' +knowledge' if model.adaptor else ''} seed {seed}] epoch "
                f"{epoch}: train loss {total / n:.4f}, valid AUC {score[0]:.4f}, "
                f"LogLoss {score[1]:.4f}"
            )
        if selection.update(epoch, score, model):
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                break


def _trained_knowledge(
    model: KARModel,
    selection: EpochSelection,
    features: CTRFeatures,
    fallback_state: Mapping[str, torch.Tensor] | None,
    seed: int,
    evaluate_test: bool,
) -> dict[str, Any]:
    """The knowledge model at its best trained epoch (loaded into ``model``): its adaptor
    state, its ungated metrics and, given the model without knowledge, how it compares with
    that model on validation. TrainResult fields."""
    state = selection.trained_state if selection.trained_state is not None else selection.best_state
    score = selection.trained if selection.trained is not None else selection.best
    model.load_state_dict(state)
    assert model.adaptor is not None
    test = evaluate(model, features.tensors("test")) if evaluate_test else (math.nan, math.nan)
    out: dict[str, Any] = {
        "best_trained_epoch": selection.trained_epoch,
        "ungated_valid_auc": score[0],
        "ungated_test_auc": test[0],
        "ungated_test_logloss": test[1],
        "trained_state": state,
    }
    if fallback_state is not None:
        valid = features.tensors("valid")
        k_auc, n_auc, win = versus_none(model, fallback_state, valid, seed)
        out.update(knowledge_valid_auc=k_auc, none_valid_auc=n_auc, gate_probability=win)
    return out
