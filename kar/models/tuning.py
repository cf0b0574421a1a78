"""The grid search on validation: each backbone's configuration (:data:`TUNING_GRID`,
without knowledge), then each knowledge arm's start and knowledge learning rate
(:data:`KNOWLEDGE_GRID`), and the configuration ``kar train`` publishes with
(:func:`choose_training_config`). No trial reads the test split."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kar.errors import ConfigError
from kar.models.runlog import RunLog, load_state, result_row, save_state

if TYPE_CHECKING:
    import torch

    from kar.adaptor.config import AdaptorConfig
    from kar.models.inputs import CTRFeatures
    from kar.models.train import TrainResult

# Shared ModelConfig fields every backbone has: 2 learning rates x 2 embedding weight
# decays (the embedding tables' decay decides most of the gap to the counters-only baseline)
TUNING_GRID: tuple[dict[str, Any], ...] = (
    {"lr": 1e-3, "embedding_weight_decay": 0.01},
    {"lr": 1e-3, "embedding_weight_decay": 0.1},
    {"lr": 3e-3, "embedding_weight_decay": 0.01},
    {"lr": 3e-3, "embedding_weight_decay": 0.1},
)
# Then each knowledge arm (knowledge and shuffled alike) chooses on its own validation AUC
# (ungated: the knowledge model itself) where it starts ("warm": from the same seed's model
# without knowledge; "fresh": trained jointly from the start), how fast its knowledge
# parameters learn (they start at zero, so at the backbone's rate they may move too little
# in the epochs validation allows) and whether the adaptor z-scores its raw encodings
# (``standardize``: +8% for DeepFM on the oracle demo, closes the gate on SmolLM2's answers
# on ML-100K, docs/benchmarks.md: so chosen per arm, not fixed).
KNOWLEDGE_GRID: tuple[dict[str, Any], ...] = (
    {"start": "warm", "knowledge_lr_scale": 1.0},
    {"start": "warm", "knowledge_lr_scale": 5.0},
    {"start": "fresh", "knowledge_lr_scale": 1.0},
    {"start": "warm", "knowledge_lr_scale": 5.0, "standardize": True},
    {"start": "fresh", "knowledge_lr_scale": 1.0, "standardize": True},
)
# grid keys that set the adaptor's configuration, not the backbone's
ADAPTOR_KEYS: tuple[str, ...] = ("standardize",)


def validation_score(result: TrainResult, ungated: bool = False) -> tuple[float, float]:
    """(validation AUC, validation LogLoss) of a run; ``ungated``: of the knowledge model
    at its best trained epoch, before the gate (the run's own score when it has none)."""
    if ungated and result.ungated_valid_auc is not None:
        return result.ungated_valid_auc, result.valid_logloss
    return result.valid_auc, result.valid_logloss


def best_trial(
    trials: Iterable[tuple[dict[str, Any], TrainResult]],
    ungated: bool = False,
) -> tuple[dict[str, Any], TrainResult]:
    """The (point, run) with the best validation AUC (``ungated``: the knowledge model's,
    :func:`validation_score`); lower validation LogLoss breaks a tie, then the earlier
    trial."""
    from kar.models.train import is_better

    best: tuple[dict[str, Any], TrainResult] | None = None
    for point, result in trials:
        score = validation_score(result, ungated)
        if best is None or is_better(score, validation_score(best[1], ungated)):
            best = (point, result)
    if best is None:
        raise ConfigError("the tuning grid is empty")
    return best


def choose_config(
    features: CTRFeatures,
    backbone: str,
    grid: Sequence[Mapping[str, Any]] = TUNING_GRID,
    model_config: Mapping[str, Any] | None = None,
    adaptor_config: AdaptorConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    init_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], TrainResult, list[dict[str, Any]]]:
    """Train ``backbone`` once per grid point (over ``model_config``) and keep the best
    validation AUC (lower validation LogLoss breaks a tie; then the earlier point).
    ``init_state``: every trial warm-starts from it (see :func:`train_ctr`).

    The trials do not read the test split. Returns (chosen point, its run with the test
    split evaluated once, one dict per trial: config, valid_auc, valid_logloss).
    """
    from kar.models.train import evaluate_test_split, train_ctr

    if not grid:
        raise ConfigError("the tuning grid is empty")
    trials: list[dict[str, Any]] = []

    def trial(point: Mapping[str, Any]) -> tuple[dict[str, Any], TrainResult]:
        result = train_ctr(
            features,
            backbone,
            {**(model_config or {}), **point},
            adaptor_config,
            seed=seed,
            progress=progress,
            evaluate_test=False,
            init_state=init_state,
        )
        trials.append(
            {"config": dict(point), "valid_auc": result.valid_auc,
             "valid_logloss": result.valid_logloss}
        )  # fmt: skip
        return dict(point), result

    chosen, result = best_trial(trial(point) for point in grid)
    evaluate_test_split(result, features)
    return chosen, result, trials


def start_and_config(point: Mapping[str, Any], warm_start: bool) -> tuple[dict[str, Any], bool]:
    """A knowledge arm's grid point -> (model config, whether it warm-starts); the adaptor's
    keys (:data:`ADAPTOR_KEYS`) are left to :func:`adaptor_of`."""
    start = point.get("start", "warm" if warm_start else "fresh")
    skip = {"start", *ADAPTOR_KEYS}
    return {k: v for k, v in point.items() if k not in skip}, start == "warm"


def adaptor_of(point: Mapping[str, Any], adaptor_config: AdaptorConfig) -> AdaptorConfig:
    """The adaptor configuration a knowledge arm's grid point trains with: ``adaptor_config``
    with the point's adaptor keys (:data:`ADAPTOR_KEYS`) set."""
    update = {k: point[k] for k in ADAPTOR_KEYS if k in point}
    return adaptor_config.model_copy(update=update) if update else adaptor_config


def train_at_point(
    features: CTRFeatures,
    backbone: str,
    base_config: Mapping[str, Any],
    point: Mapping[str, Any],
    adaptor_config: AdaptorConfig,
    none_state: Mapping[str, torch.Tensor] | None,
    *,
    seed: int,
    warm_start: bool,
    progress: bool = False,
    evaluate_test: bool = True,
) -> TrainResult:
    """Train a knowledge arm at its grid ``point``: its start (warm from ``none_state`` or
    fresh), its model config over ``base_config``, its adaptor (:func:`adaptor_of`); the
    gate falls back to ``none_state``."""
    from kar.models.train import train_ctr

    config, warm = start_and_config(point, warm_start)
    return train_ctr(
        features, backbone, {**base_config, **config}, adaptor_of(point, adaptor_config),
        seed=seed, progress=progress, evaluate_test=evaluate_test,
        init_state=none_state if warm else None, fallback_state=none_state,
    )  # fmt: skip


def choose_knowledge_point(
    features: CTRFeatures,
    backbone: str,
    base_config: Mapping[str, Any],
    point: Mapping[str, Any],
    adaptor_config: AdaptorConfig,
    none_state: Mapping[str, torch.Tensor] | None,
    *,
    seed: int,
    warm_start: bool,
    progress: bool = False,
) -> tuple[dict[str, Any], TrainResult]:
    """Each :data:`KNOWLEDGE_GRID` point over the backbone's ``point``, trained at ``seed``;
    the best on the knowledge model's own (ungated) validation AUC, its test split evaluated
    once. Returns (chosen point, its run)."""
    from kar.models.train import evaluate_test_split

    trials = (
        (trial, train_at_point(
            features, backbone, base_config, trial, adaptor_config, none_state,
            seed=seed, warm_start=warm_start, progress=progress, evaluate_test=False,
        ))
        for trial in ({**point, **k} for k in KNOWLEDGE_GRID)
    )  # fmt: skip
    chosen, result = best_trial(trials, ungated=True)
    evaluate_test_split(result, features)
    return chosen, result


@dataclass
class TrainingChoice:
    """The configuration the published adaptor is trained with (``kar train``)."""

    point: dict[str, Any]  # the backbone's grid point, chosen on validation without knowledge
    knowledge_point: dict[str, Any] | None  # + the knowledge arm's grid point, when logged
    source: str  # "evaluation run log" or "search on validation"
    none_state: Mapping[str, torch.Tensor] | None  # the model without knowledge, if kept


def choose_training_config(
    features: CTRFeatures,
    backbone: str,
    base_config: Mapping[str, Any],
    log: RunLog,
    *,
    search_seed: int,
    seed: int,
    cold_threshold: int = 5,
    progress: bool = False,
) -> TrainingChoice:
    """The configuration :func:`kar.models.harness.compare` with ``tune`` chose for
    ``backbone``, read from its run ``log`` (fingerprints of a tuned evaluation,
    :func:`kar.models.harness.run_fingerprints`), or else the same search:
    :func:`choose_config` over :data:`TUNING_GRID` without knowledge at ``search_seed``
    (the evaluation's first seed), logged so that the evaluation reuses it.
    ``none_state``: the model without knowledge at ``seed`` when the log keeps it."""
    point = log.config_of(backbone, "none")
    source = "evaluation run log"
    none_state = load_state(log.state_path(backbone, seed)) if point is not None else None
    if point is None:
        plain = features.without_knowledge()
        point, result, _ = choose_config(
            plain, backbone, TUNING_GRID, base_config, seed=search_seed, progress=progress
        )
        source = "search on validation"
        log.add(result_row(features, "none", result, point, cold_threshold))
        save_state(log.state_path(backbone, search_seed), result.model.state_dict())
        if seed == search_seed:
            none_state = result.model.state_dict()
    knowledge_point = log.config_of(backbone, "knowledge")
    return TrainingChoice(dict(point), knowledge_point, source, none_state)
