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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from kar.adaptor.config import AdaptorConfig
from kar.adaptor.experts import KnowledgeAdaptor, build_adaptor
from kar.errors import ConfigError
from kar.models.base import CTRModel, FeatureSpec, Knowledge
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
    """Metrics of the restored best epoch, and the trained modules."""

    backbone: str
    seed: int
    valid_auc: float
    valid_logloss: float
    test_auc: float
    test_logloss: float
    best_epoch: int  # 1-based; 0: the warm start was kept
    epochs_run: int
    seconds: float
    seconds_per_epoch: float
    model: KARModel
    adaptor: KnowledgeAdaptor | None
    model_config: ModelConfig
    adaptor_config: AdaptorConfig | None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    # knowledge models given a fallback: False when the gate closed (the result is the
    # model without knowledge), True when the knowledge model was kept; None otherwise
    gate_open: bool | None = None

    def metrics(self) -> dict[str, Any]:
        keys = ("backbone", "seed", "valid_auc", "valid_logloss", "test_auc", "test_logloss")
        keys += ("best_epoch", "epochs_run", "seconds", "seconds_per_epoch")
        return {k: getattr(self, k) for k in keys}

    def trained_adaptor(self, encoder: str | None = None) -> TrainedAdaptor:
        """The adaptor alone, ready to save and export vectors."""
        from kar.adaptor.trained import TrainedAdaptor

        if self.adaptor is None or self.adaptor_config is None:
            raise ConfigError("this model was trained without knowledge: no adaptor to export")
        return TrainedAdaptor(
            config=self.adaptor_config,
            module=self.adaptor,
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


@torch.no_grad()
def predict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """Click probabilities for every row of a split (eval mode)."""
    model.eval()
    n = len(tensors["label"])
    out = [
        torch.sigmoid(model({k: v[s : s + EVAL_BATCH] for k, v in tensors.items()}))
        for s in range(0, n, EVAL_BATCH)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(AUC, LogLoss) of ``model`` on a split."""
    labels = tensors["label"].numpy()
    probs = predict(model, tensors)
    return auc(labels, probs), logloss(labels, probs)


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
) -> bool:
    """Keep the trained knowledge model (True) or close it into the fallback (False)."""
    from kar.models.metrics import auc_win_probability

    if confidence <= 0:
        return True
    closed = copy.deepcopy(model)
    close_knowledge(closed, fallback_state)
    labels = valid["label"].numpy()
    win = auc_win_probability(labels, predict(model, valid), predict(closed, valid), seed=seed)
    if win >= confidence:
        return True
    model.load_state_dict(closed.state_dict())
    return False


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
    """
    set_seed(seed)
    model, config = build_model(features, backbone, model_config, adaptor_config)
    train, valid = features.tensors("train"), features.tensors("valid")
    n = len(train["label"])
    if n == 0:
        raise ConfigError("the train split is empty")
    if init_state is not None:
        missing, unexpected = model.load_state_dict(dict(init_state), strict=False)
        foreign = [k for k in missing if not _is_knowledge_parameter(k)] + list(unexpected)
        if foreign:
            raise ConfigError(
                f"cannot warm-start {backbone} from a model with other parameters: {foreign[:3]}"
            )
    else:
        fit_wide_term(model, train)
    # the starting point is epoch 0 of the selection on validation
    best = evaluate(model, valid)
    best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), 0, 0
    history: list[dict[str, float]] = [{"epoch": 0, "valid_auc": best[0], "valid_logloss": best[1]}]
    optimiser = torch.optim.Adam(model.parameter_groups(config), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=config.lr_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    train_seconds = 0.0
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total, aux_total, with_aux = 0.0, 0.0, False
        for idx in torch.randperm(n, generator=generator).split(config.batch_size):
            batch = {k: v[idx] for k, v in train.items()}
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
        train_seconds += time.perf_counter() - t0
        score = evaluate(model, valid)
        row = {"epoch": epoch, "train_loss": total / n}  # CTR loss + auxiliary term
        if with_aux:
            row["aux_loss"] = aux_total / n
        history.append({**row, "valid_auc": score[0], "valid_logloss": score[1]})
        if progress:
            from rich import print as rprint

            rprint(
                f"[{backbone}{' +knowledge' if model.adaptor else ''} seed {seed}] epoch {epoch}: "
                f"train loss {total / n:.4f}, valid AUC {score[0]:.4f}, LogLoss {score[1]:.4f}"
            )
        if is_better(score, best):
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best is not None and best_state is not None
    model.load_state_dict(best_state)
    gate_open = None
    if fallback_state is not None and model.adaptor is not None:
        gate_open = _gate(model, fallback_state, valid, config.knowledge_gate, seed)
        if not gate_open:
            best, best_epoch = evaluate(model, valid), 0
    test_auc, test_logloss = (
        evaluate(model, features.tensors("test")) if evaluate_test else (math.nan, math.nan)
    )
    epochs_run = sum(1 for row in history if row["epoch"] > 0)
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
        seconds_per_epoch=train_seconds / max(epochs_run, 1),
        model=model,
        adaptor=model.adaptor,
        model_config=config,
        adaptor_config=adaptor_config,
        history=history,
        gate_open=gate_open,
    )
