"""Evaluation harness: every backbone without knowledge, with knowledge, and with the
shuffled-knowledge control, over seeds, beside the trivial baseline.

:func:`compare` -> one row per (backbone, arm, seed), run as :class:`CompareSettings`
says; :func:`kar.models.report.summarize` -> mean ± std per backbone x arm, the relative
AUC change over no knowledge and over the control, and the cold-start slices;
:func:`kar.models.report.write_report` -> markdown table + PNG.

The arms: ``none`` (no knowledge), ``knowledge`` (the project's vectors) and ``shuffled``
(the same vectors permuted across entities: the same distribution, no information),
trained exactly like ``knowledge``. A lift counts only above ``shuffled`` and above the
seed spread. With ``warm_start`` (the default) each knowledge arm starts from the same
seed's no-knowledge model, which is epoch 0 of its selection on validation; and every
knowledge model passes a gate that can close: it is kept only if it beats that
no-knowledge model on validation with probability ``knowledge_gate`` (paired bootstrap),
else the arm's result is the no-knowledge model (``train_ctr(fallback_state=...)``).
Every table also reports the same runs without the gate (``knowledge (ungated)``,
``shuffled (ungated)``: each run's best trained epoch on validation, no fallback), so the
control keeps controlling when a gate closes: ungated shuffled over none is capacity,
ungated knowledge over ungated shuffled is information (``info_gain``).

With ``tune=True``, each backbone first picks its configuration from a small grid
(:data:`kar.models.tuning.TUNING_GRID`) by validation AUC at the first seed, without
knowledge; every arm and seed then runs the chosen configuration, each knowledge arm with
the start (warm or fresh) and knowledge learning rate it chose on its own validation AUC
(:data:`kar.models.tuning.KNOWLEDGE_GRID`). Only the chosen configurations' test metrics
are reported. The cold-start slices are the test rows whose item (or user) had fewer than
``cold_threshold`` interactions in history + train.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from kar.adaptor.config import AdaptorConfig
from kar.errors import ConfigError
from kar.models.baseline import fit_rate_baseline
from kar.models.runlog import (
    ARMS,
    BASELINE,
    RESULT_SCHEMA,
    RunLog,
    cold_slices,
    load_state,
    result_row,
    save_state,
)
from kar.models.tuning import (
    KNOWLEDGE_GRID,
    TUNING_GRID,
    best_trial,
    choose_config,
    train_at_point,
)

if TYPE_CHECKING:
    import torch

    from kar.models.inputs import CTRFeatures
    from kar.models.train import TrainResult


@dataclass(frozen=True)
class CompareSettings:
    """What :func:`compare` runs and how. The fields, in order, are :func:`compare`'s
    former arguments (the last ones keyword-only).

    ``model_config`` applies to every backbone, ``model_configs[backbone]`` on top of it
    (kar.yaml's ``training.model_config``). ``tune``: choose each backbone's configuration
    from ``grid`` (default :data:`TUNING_GRID`) on validation AUC at the first seed without
    knowledge (see :func:`choose_config`); all arms use it. ``runs_file``: a :class:`RunLog`
    of finished runs, skipped on a rerun (the no-knowledge models are kept beside it for
    the warm starts); with it, ``workers`` > 1 trains that many (backbone, seed) runs at
    once, each in a process of its own on one torch thread (:func:`compare_in_workers`).
    ``fingerprint`` names the features every arm trains on (data, split, history) and
    ``knowledge_fingerprint`` the knowledge vectors: new vectors retrain the knowledge arms
    and reuse the others."""

    backbones: Sequence[str] = ("deepfm", "din")
    seeds: Sequence[int] = (0, 1, 2)
    adaptor_config: AdaptorConfig | None = None
    model_config: Mapping[str, Any] | None = None
    progress: bool = True
    tune: bool = False
    grid: Sequence[Mapping[str, Any]] | None = None
    runs_file: Path | None = None
    fingerprint: str = ""
    knowledge_fingerprint: str = ""
    _: KW_ONLY
    model_configs: Mapping[str, Mapping[str, Any]] | None = None
    arms: Sequence[str] = ARMS
    warm_start: bool = True
    cold_threshold: int = 5
    shuffle_seed: int = 0
    workers: int = 1

    def base_config(self, backbone: str) -> dict[str, Any]:
        """``model_config`` with ``model_configs[backbone]`` on top."""
        own = (self.model_configs or {}).get(backbone) or {}
        return {**(self.model_config or {}), **own}

    def fingerprints(self, adaptor_config: AdaptorConfig) -> dict[str, str]:
        """Each arm's :class:`RunLog` fingerprint (:func:`run_fingerprints`)."""
        return run_fingerprints(
            self.fingerprint, self.knowledge_fingerprint, adaptor_config, tune=self.tune,
            grid=self.grid, model_config=self.model_config, model_configs=self.model_configs,
            warm_start=self.warm_start, shuffle_seed=self.shuffle_seed,
        )  # fmt: skip


def compare(
    features: CTRFeatures,
    *args: Any,
    settings: CompareSettings | None = None,
    **kwargs: Any,
) -> pl.DataFrame:
    """Train every backbone in every arm (see the module docstring) for every seed, plus the
    baseline, as ``settings`` says; or pass :class:`CompareSettings`' fields as arguments,
    in its order: ``compare(features, ("deepfm",), (0, 1), model_config=...)``."""
    if settings is None:
        settings = CompareSettings(*args, **kwargs)
    elif args or kwargs:
        raise TypeError("compare takes settings or the settings' fields, not both")
    units = len(settings.backbones) * len(settings.seeds)
    if settings.workers > 1 and units > 1 and settings.runs_file is not None:
        compare_in_workers(features, settings)  # every run is logged: read back below
    return Comparison(features, settings).run()


def compare_in_workers(features: CTRFeatures, settings: CompareSettings) -> None:
    """Run :func:`compare` in ``settings.workers`` processes sharing the run log, which the
    caller then reads: first each backbone's first seed (where it chooses its configuration
    on validation), then, as each finishes, every other seed of that backbone on its own
    (reading the choice back from the log). Rows equal one process's: training is seeded.
    Spawned, not forked: the parent may hold a vLLM engine's threads. A worker's error is
    raised here; Ctrl-C stops them all and the log keeps what finished."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from dataclasses import replace

    first, rest = tuple(settings.seeds[:1]), tuple(settings.seeds[1:])
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        settings.workers, mp_context=context, initializer=_hold_features, initargs=(features,)
    ) as pool:  # the features go to each process once, not with every job

        def submit(backbone: str, seeds: tuple[int, ...]) -> Any:
            one = replace(settings, backbones=(backbone,), seeds=seeds, workers=1)
            return pool.submit(_compare_held, one)

        running = {submit(b, first): (b, True) for b in settings.backbones}
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for job in done:
                    backbone, was_first = running.pop(job)
                    job.result()
                    if was_first:
                        running.update({submit(backbone, (s,)): (backbone, False) for s in rest})
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


_HELD_FEATURES: list[CTRFeatures] = []  # a worker process's features (compare_in_workers)


def _hold_features(features: CTRFeatures) -> None:
    _HELD_FEATURES[:] = [features]


def _compare_held(settings: CompareSettings) -> pl.DataFrame:
    return compare(_HELD_FEATURES[0], settings=settings)


def run_fingerprints(
    fingerprint: str,
    knowledge_fingerprint: str,
    adaptor_config: AdaptorConfig,
    *,
    tune: bool,
    grid: Sequence[Mapping[str, Any]] | None = None,
    model_config: Mapping[str, Any] | None = None,
    model_configs: Mapping[str, Mapping[str, Any]] | None = None,
    warm_start: bool = True,
    shuffle_seed: int = 0,
) -> dict[str, str]:
    """Each arm's :class:`RunLog` fingerprint for :func:`compare`'s arguments: what its
    runs train on and how, so a logged run is reused only for the same."""
    from kar.records import stable_hash

    shared = [fingerprint, tune, [dict(g) for g in grid or []], dict(model_config or {})]
    shared.append({k: dict(v) for k, v in (model_configs or {}).items()})
    with_vectors = [*shared, knowledge_fingerprint, adaptor_config.model_dump(mode="json")]
    with_vectors.append([warm_start, list(KNOWLEDGE_GRID) if tune else []])
    return {
        "none": stable_hash(shared, length=16),
        "knowledge": stable_hash(with_vectors, length=16),
        "shuffled": stable_hash([*with_vectors, "shuffled", shuffle_seed], length=16),
    }


def check_arms(features: CTRFeatures, arms: Sequence[str]) -> None:
    """Raise a :class:`ConfigError` for an unknown arm, or knowledge arms without knowledge."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"unknown evaluation arm {unknown[0]!r}; expected one of {ARMS}")
    if not features.has_knowledge and set(arms) != {"none"}:
        raise ConfigError("compare needs features built with knowledge_users / knowledge_items")


def arm_features(
    features: CTRFeatures, arms: Sequence[str], shuffle_seed: int
) -> dict[str, CTRFeatures]:
    """The features each arm trains on: none, knowledge (when built with it), shuffled."""
    out = {"none": features.without_knowledge()}
    if features.has_knowledge:
        out["knowledge"] = features
    if "shuffled" in arms:
        out["shuffled"] = features.with_shuffled_knowledge(shuffle_seed)
    return out


def baseline_rows(
    features: CTRFeatures, seeds: Sequence[int], cold_threshold: int
) -> list[dict[str, Any]]:
    """The trivial baseline's row, once per seed (it is fitted once: it has no seed)."""
    base = fit_rate_baseline(features)
    base_slices = cold_slices(features, base.test_probs, cold_threshold)
    return [
        {
            "backbone": BASELINE,
            "arm": "none",
            "seed": seed,
            "test_auc": base.test_auc,
            "test_logloss": base.test_logloss,
            "valid_auc": base.valid_auc,
            "best_epoch": 0,
            "seconds_per_epoch": base.seconds,
            "config": "{}",
            **base_slices,
            "gate_open": None,
        }
        for seed in seeds
    ]


@dataclass
class BackboneChoices:
    """What one backbone chose on validation so far (with ``tune``): its grid point without
    knowledge (None: not chosen yet) and each knowledge arm's point."""

    base_config: dict[str, Any]
    point: dict[str, Any] | None = None
    arm_points: dict[str, dict[str, Any]] = field(default_factory=dict)


class Comparison:
    """One :func:`compare`: the arms' features, the run log and the rows so far (the
    baseline's first, then per backbone and seed: none, then the knowledge arms)."""

    def __init__(self, features: CTRFeatures, settings: CompareSettings) -> None:
        check_arms(features, settings.arms)
        self.features = features
        self.settings = settings
        self.adaptor_config = settings.adaptor_config or AdaptorConfig.load("hea")
        self.log = RunLog(settings.runs_file, settings.fingerprints(self.adaptor_config))
        self.arm_features = arm_features(features, settings.arms, settings.shuffle_seed)
        self.rows = baseline_rows(features, settings.seeds, settings.cold_threshold)
        self.knowledge_arms = [a for a in settings.arms if a != "none"]

    def run(self) -> pl.DataFrame:
        """Every backbone, seed and arm; the logged runs are read back, not trained."""
        for backbone in self.settings.backbones:
            choices = self.logged_choices(backbone)
            for seed in self.settings.seeds:
                self.run_seed(backbone, seed, choices)
        return pl.DataFrame(self.rows, schema=RESULT_SCHEMA)

    def logged_choices(self, backbone: str) -> BackboneChoices:
        """What ``backbone`` chose on validation in logged runs (with ``tune``; a run of
        later seeds alone reuses it): the point without knowledge and each arm's."""
        choices = BackboneChoices(self.settings.base_config(backbone))
        if self.settings.tune:
            choices.point = self.log.config_of(backbone, "none")
            for arm in self.knowledge_arms:
                point = self.log.config_of(backbone, arm)
                if point is not None:
                    choices.arm_points[arm] = point
        return choices

    def run_seed(self, backbone: str, seed: int, choices: BackboneChoices) -> None:
        """One seed of ``backbone``: the model without knowledge, then each knowledge arm."""
        done = {arm: self.log.get(backbone, arm, seed) for arm in ("none", *self.knowledge_arms)}
        none_state = self.none_model(backbone, seed, choices, done)
        point = choices.point or {}
        for arm in self.knowledge_arms:
            logged = done[arm]
            if logged is not None:
                self.rows.append(logged)
                if self.settings.tune and arm not in choices.arm_points:
                    choices.arm_points[arm] = json.loads(logged["config"])
                continue
            arm_point, result = self.knowledge_run(backbone, arm, seed, choices, point, none_state)
            self.record(arm, result, arm_point)

    def none_model(
        self,
        backbone: str,
        seed: int,
        choices: BackboneChoices,
        done: Mapping[str, dict[str, Any] | None],
    ) -> Mapping[str, torch.Tensor] | None:
        """The no-knowledge model's state (warm starts, the gate's fallback): kept beside
        the log when its run is logged, else trained (and recorded, and kept). None when
        every knowledge arm of this seed is logged too."""
        logged = done["none"]
        todo = [a for a in self.knowledge_arms if done[a] is None]
        if logged is not None:
            if self.settings.tune and choices.point is None:
                choices.point = json.loads(logged["config"])
            if "none" in self.settings.arms:
                self.rows.append(logged)
            none_state = load_state(self.log.state_path(backbone, seed)) if todo else None
            if not todo or none_state is not None:
                return none_state
        result, point = self.train_none(backbone, seed, choices)
        none_state = result.model.state_dict()
        save_state(self.log.state_path(backbone, seed), none_state)
        if logged is None and "none" in self.settings.arms:
            self.record("none", result, point)
        return none_state

    def train_none(
        self, backbone: str, seed: int, choices: BackboneChoices
    ) -> tuple[TrainResult, dict[str, Any]]:
        """Train without knowledge at the chosen point; with ``tune`` and none chosen yet,
        choose it on validation first (:func:`choose_config`)."""
        settings = self.settings
        if settings.tune and choices.point is None:
            grid = TUNING_GRID if settings.grid is None else settings.grid
            point, result, _ = choose_config(
                self.arm_features["none"], backbone, grid, choices.base_config,
                seed=seed, progress=settings.progress,
            )  # fmt: skip
            choices.point = point
            return result, point
        point = choices.point or {}
        return self.train(backbone, "none", seed, {**choices.base_config, **point}), point

    def knowledge_run(
        self,
        backbone: str,
        arm: str,
        seed: int,
        choices: BackboneChoices,
        point: dict[str, Any],
        none_state: Mapping[str, torch.Tensor] | None,
    ) -> tuple[dict[str, Any], TrainResult]:
        """A knowledge arm's run at its point; with ``tune``, the arm first chooses its start
        knowledge learning rate and standardisation (:data:`KNOWLEDGE_GRID`) on its own
        (ungated) validation AUC."""
        base = choices.base_config
        if not (self.settings.tune and arm not in choices.arm_points):
            arm_point = choices.arm_points.get(arm, point)
            return arm_point, self.train_knowledge(backbone, arm, seed, base, arm_point, none_state)
        from kar.models.train import evaluate_test_split

        trials = (
            (trial, self.train_knowledge(backbone, arm, seed, base, trial, none_state, False))
            for trial in ({**point, **k} for k in KNOWLEDGE_GRID)
        )
        arm_point, result = best_trial(trials, ungated=True)
        evaluate_test_split(result, self.arm_features[arm])
        choices.arm_points[arm] = arm_point
        return arm_point, result

    def train_knowledge(
        self,
        backbone: str,
        arm: str,
        seed: int,
        base_config: Mapping[str, Any],
        point: Mapping[str, Any],
        none_state: Mapping[str, torch.Tensor] | None,
        evaluate_test: bool = True,
    ) -> TrainResult:
        """Train a knowledge arm at ``point`` (:func:`kar.models.tuning.train_at_point`)."""
        return train_at_point(
            self.arm_features[arm], backbone, base_config, point, self.adaptor_config,
            none_state, seed=seed, warm_start=self.settings.warm_start,
            progress=self.settings.progress, evaluate_test=evaluate_test,
        )  # fmt: skip

    def train(
        self,
        backbone: str,
        arm: str,
        seed: int,
        config: dict[str, Any],
        init: Mapping[str, torch.Tensor] | None = None,
        evaluate_test: bool = True,
        fallback: Mapping[str, torch.Tensor] | None = None,
    ) -> TrainResult:
        """:func:`train_ctr` on the arm's features (with the adaptor unless arm is none)."""
        from kar.models.train import train_ctr

        return train_ctr(
            self.arm_features[arm],
            backbone,
            config,
            self.adaptor_config if arm != "none" else None,
            seed=seed,
            progress=self.settings.progress,
            evaluate_test=evaluate_test,
            init_state=init,
            fallback_state=fallback,
        )

    def record(self, arm: str, result: TrainResult, point: Mapping[str, Any]) -> None:
        """Add a finished run's row and log it."""
        row = result_row(self.features, arm, result, point, self.settings.cold_threshold)
        self.rows.append(row)
        self.log.add(row)
