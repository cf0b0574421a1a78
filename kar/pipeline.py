"""The stages of a kar project, in order, over the Python API of each stage package.

Each function reads what the previous stage left in the project folder and writes its
own artifacts, so the CLI commands can run one at a time or all together
(``quickstart``). Heavy packages are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kar.errors import ConfigError, KarError

# `name as name`: re-exported, so kar.pipeline keeps every name it had (artifact file names,
# project creation, data loading, the generation estimate)
from kar.estimate import DEFAULT_RATE as DEFAULT_RATE
from kar.estimate import DEFAULT_RATES as DEFAULT_RATES
from kar.estimate import KindEstimate as KindEstimate
from kar.estimate import engine_name as engine_name
from kar.estimate import kind_estimate, measured_rates, record_rate
from kar.project import EVALUATE_RUNS as EVALUATE_RUNS
from kar.project import RATES_FILE as RATES_FILE
from kar.project import TIMINGS_FILE as TIMINGS_FILE
from kar.project import ProjectFolder
from kar.project_data import StageContext as StageContext
from kar.project_data import Subset as Subset
from kar.project_data import import_knowledge as import_knowledge
from kar.project_data import load_data as load_data
from kar.project_data import load_scenario, stage_context
from kar.project_data import time_split as time_split
from kar.project_init import init_project as init_project
from kar.project_init import init_table_project as init_table_project
from kar.timings import timed_stage

if TYPE_CHECKING:
    import polars as pl

    from kar.adaptor import AdaptorConfig
    from kar.data.schema import Dataset, Split
    from kar.encoding import EntityVectors, TextEncoder
    from kar.features.publishing import PublishReport
    from kar.generation import GenerationReport, KnowledgeStore
    from kar.models.inputs import CTRFeatures
    from kar.models.train import TrainResult
    from kar.prompts import Scenario
    from kar.records import PromptRecord, SamplingParams


def build_prompts(
    project: ProjectFolder,
    dataset: Dataset,
    split: Split,
    scenario: Scenario | None = None,
    subset: Subset | None = None,
) -> list[PromptRecord]:
    """All user-preference and item-fact prompts of the project's scenario (``subset``:
    of those entities only)."""
    from kar.prompts import build_item_prompts, build_user_prompts

    scenario = scenario or load_scenario(project)
    if subset is None:
        users = build_user_prompts(dataset, scenario, split.as_of)
        return users + build_item_prompts(dataset, scenario)
    as_of = split.as_of if subset.as_of is None else subset.as_of
    users = build_user_prompts(dataset, scenario, as_of, user_ids=subset.user_ids)
    return users + build_item_prompts(dataset, scenario, item_ids=subset.item_ids)


def sampling_params(
    project: ProjectFolder, kind: str, scenario: Scenario | None = None
) -> SamplingParams:
    """Sampling parameters for a knowledge kind: the scenario's limits unless kar.yaml sets them."""
    from kar.records import KIND_USER

    gen = project.settings.generation
    scenario = scenario or load_scenario(project)
    limit = gen.max_new_tokens_user if kind == KIND_USER else gen.max_new_tokens_item
    return scenario.sampling_params(
        kind,
        **({"max_new_tokens": limit} if limit else {}),
        temperature=gen.temperature,
        repetition_penalty=gen.repetition_penalty,
    )


def answer_prompts(
    project: ProjectFolder,
    prompts: list[PromptRecord],
    *,
    store: KnowledgeStore | None = None,
    scenario: Scenario | None = None,
    progress: bool = True,
) -> dict[str, GenerationReport]:
    """Ask the LLM the prompts not yet answered, per knowledge kind; one report per kind."""
    from kar.generation import KnowledgeStore, generate_knowledge
    from kar.generation.lazy import LazyBackend
    from kar.records import KIND_ITEM, KIND_USER

    store = store or KnowledgeStore(project.knowledge_store_url)
    imported = store.imported_keys()  # `kar knowledge import` texts: the LLM is not asked
    prompts = [
        p for p in prompts if (p.scenario, p.entity_type, p.entity_id, p.kind) not in imported
    ]
    gen = project.settings.generation
    kinds = [kind for kind in (KIND_USER, KIND_ITEM) if any(p.kind == kind for p in prompts)]
    params = {kind: sampling_params(project, kind, scenario) for kind in kinds}
    backend = LazyBackend(gen, store, prompts, params=params, progress=progress)
    reports = {}
    for kind in kinds:
        todo = [p for p in prompts if p.kind == kind]
        if todo:
            reports[kind] = generate_knowledge(
                todo,
                backend,
                store,
                params[kind],
                batch_size=gen.batch_size,
                max_retries=gen.max_retries,
                truncated=gen.truncated,
                progress=progress,
            )
            if reports[kind].llm_calls:
                record_rate(project, kind, backend.model_name, reports[kind])
    return reports


def select_prompts(
    project: ProjectFolder,
    dataset: Dataset,
    split: Split,
    scenario: Scenario,
    *,
    limit: int | None = None,
    sample: int | None = None,
    kinds: set[str] | None = None,
    seed: int = 0,
    subset: Subset | None = None,
) -> list[PromptRecord]:
    """The project's prompts (collective modes applied), of ``kinds`` only when given;
    ``sample``: a seeded random sample of that many entities per kind; ``limit``: then at
    most that many prompts per kind, in build order; ``subset``: of those entities only
    (and of their clusters, under collective modes: :func:`kar.collective.project.apply_modes`)."""
    import random

    from kar.collective.project import apply_modes

    prompts = build_prompts(project, dataset, split, scenario, subset)
    ids = (None, None) if subset is None else (subset.user_ids, subset.item_ids)
    prompts = apply_modes(project, dataset, split, prompts, user_ids=ids[0], item_ids=ids[1])
    if kinds is not None:
        prompts = [p for p in prompts if p.kind in kinds]
    present = sorted({p.kind for p in prompts})
    if sample is not None:
        chosen: set[tuple[str, str]] = set()
        for kind in present:
            ids = sorted({p.entity_id for p in prompts if p.kind == kind})
            picked = random.Random(f"{seed}:{kind}").sample(ids, min(sample, len(ids)))
            chosen.update((kind, entity) for entity in picked)
        prompts = [p for p in prompts if (p.kind, p.entity_id) in chosen]
    if limit is not None:
        prompts = [p for k in present for p in [q for q in prompts if q.kind == k][:limit]]
    return prompts


def run_generate(
    stage: StageContext | ProjectFolder,
    *,
    limit: int | None = None,
    sample: int | None = None,
    kinds: set[str] | None = None,
    progress: bool = True,
) -> dict[str, GenerationReport]:
    """Every user-preference and item-fact prompt of the project (``sample``: a seeded random
    sample of that many entities per kind; ``limit``: at most that many prompts per kind).

    ``kinds`` keeps only those knowledge kinds (two processes can then share the kinds of
    one project: the store takes concurrent writers). ``stage``: the project, or a
    :class:`StageContext` with what is already loaded; its ``subset``: only those entities'
    prompts (``kar refresh``; not added to timings.json).
    """
    ctx = stage_context(stage)
    project = ctx.project
    timer = timed_stage(project, "generate") if ctx.subset is None else nullcontext()
    with timer:
        dataset, split = ctx.data
        prompts = select_prompts(
            project, dataset, split, ctx.scenario, limit=limit, sample=sample, kinds=kinds,
            seed=project.settings.training.seed, subset=ctx.subset,
        )  # fmt: skip
        return answer_prompts(
            project, prompts, store=ctx.store, scenario=ctx.scenario, progress=progress
        )


def estimate_generation(
    stage: StageContext | ProjectFolder,
    *,
    limit: int | None = None,
    sample: int | None = None,
    kinds: set[str] | None = None,
) -> list[KindEstimate]:
    """Per kind: prompts, those still to answer, expected tokens and time at this machine's
    measured rate for the configured model (a per-backend default until one is measured);
    the LLM is not loaded."""
    from kar.generation.factory import backend_model_name

    ctx = stage_context(stage)
    project, scenario, store = ctx.project, ctx.scenario, ctx.store
    dataset, split = ctx.data
    prompts = select_prompts(
        project, dataset, split, scenario, limit=limit, sample=sample, kinds=kinds,
        seed=project.settings.training.seed,
    )  # fmt: skip
    imported = store.imported_keys()
    gen = project.settings.generation
    model = backend_model_name(gen)
    rates = measured_rates(project)
    kinds_found = sorted({p.kind for p in prompts}, reverse=True)  # user_preference first
    pending, params = {}, {}
    for kind in kinds_found:
        todo = [p for p in prompts if p.kind == kind]
        todo = [p for p in todo if (p.scenario, p.entity_type, p.entity_id, p.kind) not in imported]
        params[kind] = sampling_params(project, kind, scenario)
        pending[kind] = len(todo) - len(store.done_keys(todo, model, params[kind].key()))
    engine = engine_name(gen, sum(pending.values()))
    return [
        kind_estimate(
            kind,
            len([p for p in prompts if p.kind == kind]),
            pending[kind],
            params[kind].max_new_tokens,
            rates.get(kind, {}),
            model,
            engine,
        )
        for kind in kinds_found
    ]


def make_encoder(project: ProjectFolder) -> TextEncoder:
    """The project's text encoder, with its on-disk vector cache."""
    from kar.encoding import TextEncoder, VectorCache

    enc = project.settings.encoding
    return TextEncoder(
        enc.model,
        pooling=enc.pooling,
        max_length=enc.max_length,
        batch_size=enc.batch_size,
        cache=VectorCache(project.vector_cache_path),
    )


def knowledge_rows(
    project: ProjectFolder, store: KnowledgeStore | None = None, subset: Subset | None = None
) -> pl.DataFrame:
    """What the encoder sees, one row per entity: the store's latest answers (an imported
    text before any LLM answer), members given their cluster's knowledge under collective
    modes, with ``knowledge_source`` (:func:`kar.collective.project.member_knowledge`);
    ``subset``: of those entities only."""
    import polars as pl

    from kar.collective.project import member_knowledge
    from kar.generation import KnowledgeStore

    store = store or KnowledgeStore(project.knowledge_store_url)
    answers = store.answers(scenario=project.settings.scenario)
    if answers.height == 0:
        raise KarError("the knowledge store has no answers yet: run `kar generate` first")
    rows = member_knowledge(project, answers)  # members get their cluster's knowledge
    if subset is None:
        return rows
    kind, entity = pl.col("entity_type"), pl.col("entity_id")
    return rows.filter(
        ((kind == "user") & entity.is_in(list(subset.user_ids)))
        | ((kind == "item") & entity.is_in(list(subset.item_ids)))
    )


def run_encode(stage: StageContext | ProjectFolder, *, progress: bool = True) -> EntityVectors:
    """Encode every answered prompt (history + reasoning for users, facts for items)."""
    from kar.encoding import encode_knowledge

    ctx = stage_context(stage)
    project = ctx.project
    with timed_stage(project, "encode"):
        rows = knowledge_rows(project, ctx.store)
        vectors = encode_knowledge(rows, make_encoder(project), progress=progress)
        vectors.save(project.encoded_dir)
    return vectors


def knowledge_ids(
    project: ProjectFolder, source: str = "encoded", store: KnowledgeStore | None = None
) -> tuple[list[str], list[str]]:
    """(user ids, item ids) with knowledge: answers in the knowledge store (``answers``),
    encoded vectors (``encoded``) or adapted vectors, as published (``published``)."""
    import polars as pl

    if source == "answers":
        from kar.generation import KnowledgeStore

        store = store or KnowledgeStore(project.knowledge_store_url)
        answers = store.answers(scenario=project.settings.scenario)
        kind = {
            t: answers.filter(pl.col("entity_type") == t)["entity_id"] for t in ("user", "item")
        }
        return kind["user"].to_list(), kind["item"].to_list()
    if source == "encoded":
        from kar.encoding import EntityVectors

        if not project.encoded_dir.exists():
            return [], []
        vectors = EntityVectors.load(project.encoded_dir)
        return vectors.users["entity_id"].to_list(), vectors.items["entity_id"].to_list()
    if source == "published":
        paths = [project.knowledge_path(k) for k in ("user", "item")]
        users, items = (
            pl.read_parquet(p)["entity_id"].to_list() if p.exists() else [] for p in paths
        )
        return users, items
    raise ConfigError(f"coverage source {source!r}: expected answers, encoded or published")


def ctr_features(
    project: ProjectFolder, dataset: Dataset, split: Split, with_knowledge: bool
) -> CTRFeatures:
    """The CTR model inputs of the split, with the encoded knowledge when ``with_knowledge``."""
    from kar.encoding import EntityVectors
    from kar.models.inputs import CTRFeatures

    users = items = None
    if with_knowledge:
        if not (project.encoded_dir).exists():
            raise KarError("no encoded knowledge yet: run `kar encode` first")
        vectors = EntityVectors.load(project.encoded_dir)
        users, items = vectors.users, vectors.items
    tr = project.settings.training
    item_vectors = None
    if tr.history_selection == "retrieved":  # ReLLa's semantic behaviour retrieval
        from kar.ranking.item_vectors import item_text_vectors

        item_vectors = item_text_vectors(project, dataset)
    return CTRFeatures.build(
        dataset,
        split,
        history_len=tr.history_len,
        knowledge_users=users,
        knowledge_items=items,
        history_selection=tr.history_selection,
        item_vectors=item_vectors,
    )


def adaptor_config(project: ProjectFolder) -> AdaptorConfig:
    """The adaptor config named in kar.yaml: the project's experts/ first, then the bundled one."""
    from kar.adaptor import AdaptorConfig

    name = project.settings.training.adaptor
    local = project.root / "experts" / f"{name}.yaml"
    return AdaptorConfig.load(
        local if local.exists() else project.path(name) if "/" in name else name
    )


def run_train(stage: StageContext | ProjectFolder, *, progress: bool = True) -> TrainResult:
    """Train the adaptor jointly with a backbone; save it and export one vector per entity.

    The configuration is the one ``kar evaluate`` chooses on validation (read from its run
    log, else the same search, logged for it: :func:`kar.models.evaluation.choose_training_config`).
    The backbone is first trained without knowledge: the knowledge model starts from it
    (``training.warm_start``, or the start the evaluation chose) and its gate falls back to
    it. The adaptor saved and exported is the one of the best *trained* epoch on
    validation, never the untrained start; its metrics say whether knowledge beat no
    knowledge (:mod:`kar.adaptor.verdict`).
    """
    from kar.encoding import EntityVectors

    ctx = stage_context(stage)
    project = ctx.project
    with timed_stage(project, "train"):
        dataset, split = ctx.data
        features = ctr_features(project, dataset, split, with_knowledge=True)
        result = train_published(project, features, progress=progress)
        vectors = EntityVectors.load(project.encoded_dir)
        trained = result.trained_adaptor(encoder=vectors.encoder_id)
        trained.save(project.adaptor_dir)
        # the codebook belongs to the previous vectors: `kar publish` fits a new one
        project.codebook_path.unlink(missing_ok=True)
        users, items = trained.export(vectors.users, vectors.items)
        project.knowledge_dir.mkdir(parents=True, exist_ok=True)
        users.write_parquet(project.knowledge_path("user"))
        items.write_parquet(project.knowledge_path("item"))
    return result


def _evaluation_kwargs(project: ProjectFolder) -> dict[str, Any]:
    """What names an evaluation's logged runs (:func:`kar.models.evaluation.compare`'s
    arguments), shared by ``kar evaluate`` and ``kar train`` (which reuses its choice)."""
    from kar.models.registry import available_models

    tr = project.settings.training
    return {
        "adaptor_config": adaptor_config(project),
        "fingerprint": data_fingerprint(project),
        "knowledge_fingerprint": encoded_fingerprint(project),
        # every backbone's config (not only those evaluated), so processes that share
        # the backbones of one evaluation share its run log
        "model_configs": {b: tr.backbone_config(b) for b in available_models()},
        "warm_start": tr.warm_start,
    }


def train_published(
    project: ProjectFolder, features: CTRFeatures, *, progress: bool = True
) -> TrainResult:
    """The knowledge model whose adaptor ``kar train`` publishes (see :func:`run_train`):
    at the knowledge arm's grid point ``kar evaluate`` logged, or else the same search
    (:func:`kar.models.tuning.choose_knowledge_point`), logged for the evaluation when it
    ran at the evaluation's first seed."""
    from kar.models.harness import run_fingerprints
    from kar.models.runlog import RunLog, result_row
    from kar.models.train import train_ctr
    from kar.models.tuning import choose_knowledge_point, choose_training_config, train_at_point

    tr = project.settings.training
    kwargs = _evaluation_kwargs(project)
    fingerprints = run_fingerprints(
        kwargs["fingerprint"], kwargs["knowledge_fingerprint"], kwargs["adaptor_config"],
        tune=True, model_configs=kwargs["model_configs"], warm_start=tr.warm_start,
    )  # fmt: skip
    log = RunLog(project.evaluate_runs_path, fingerprints)
    search_seed = tr.eval_seeds[0] if tr.eval_seeds else tr.seed
    base = tr.backbone_config(tr.backbone)
    choice = choose_training_config(
        features, tr.backbone, base, log, search_seed=search_seed, seed=tr.seed,
        cold_threshold=tr.cold_threshold, progress=progress,
    )  # fmt: skip
    none_state = choice.none_state
    if none_state is None:
        plain = features.without_knowledge()
        config = {**base, **choice.point}
        none_state = train_ctr(plain, tr.backbone, config, seed=tr.seed, progress=progress)
        none_state = none_state.model.state_dict()
    common = {"seed": tr.seed, "warm_start": tr.warm_start, "progress": progress}
    adaptor = kwargs["adaptor_config"]
    if choice.knowledge_point is not None:
        point, source = choice.knowledge_point, choice.source
        result = train_at_point(features, tr.backbone, base, point, adaptor, none_state, **common)
    else:
        point, result = choose_knowledge_point(
            features, tr.backbone, base, choice.point, adaptor, none_state, **common
        )
        source = "search on validation"
        if tr.seed == search_seed:
            log.add(result_row(features, "knowledge", result, point, tr.cold_threshold))
    result.tuning = {"config": point, "source": source}
    return result


def _with_timestamps(
    project: ProjectFolder, split: Split, users: pl.DataFrame, items: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Users' knowledge is valid from their as-of instant; item facts from the data's start."""
    import polars as pl

    as_of = split.as_of.rename({"as_of": "event_timestamp", "user_id": "entity_id"})
    users = users.join(as_of, on="entity_id", how="left")
    start = min(frame["timestamp"].min() for frame in (split.history, split.train) if frame.height)
    users = users.with_columns(pl.col("event_timestamp").fill_null(start))
    items = items.with_columns(pl.lit(start).alias("event_timestamp"))
    return users, items


def knowledge_lineage(
    project: ProjectFolder, store: KnowledgeStore | None = None
) -> dict[str, str]:
    """What produced the published vectors: prompt version, LLM, encoder, adaptor run, and
    whether knowledge beat no knowledge on validation when the adaptor was trained (the
    gate's verdict, the AUCs, the bootstrap probability: :func:`adaptor_gain`)."""
    from kar.generation import KnowledgeStore
    from kar.records import stable_hash

    store = store or KnowledgeStore(project.knowledge_store_url)
    answers = store.answers(scenario=project.settings.scenario)
    adaptor = json.loads(project.adaptor_config_path.read_text())
    return {
        "prompt_version": ",".join(sorted(set(answers["prompt_version"].to_list()))),
        "llm": ",".join(sorted(set(answers["model"].to_list()))),
        "encoder": str(adaptor.get("encoder")),
        "adaptor": f"{adaptor['adaptor']['type']}-{adaptor['backbone']}-seed{adaptor['seed']}"
        f"@{stable_hash(adaptor, length=8)}",
        **adaptor_gain(project),
    }


def adaptor_gain(project: ProjectFolder) -> dict[str, str]:
    """The trained adaptor's verdict as lineage strings (:mod:`kar.adaptor.verdict`;
    ``unknown`` values for an adaptor trained before kar recorded them)."""
    from kar.adaptor.verdict import gain_lineage

    path = project.adaptor_metrics_path
    try:
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        metrics = {}
    return gain_lineage(metrics if isinstance(metrics, dict) else {})


def run_publish(
    stage: StageContext | ProjectFolder, *, require_gain: bool = False
) -> PublishReport:
    """Publish the adapted vectors to Feast: offline Parquet partition, apply, materialise.

    The lineage (the views' ``kar.*`` tags and ``report.lineage``) says whether knowledge
    beat no knowledge on validation when the adaptor was trained; ``require_gain``: refuse
    (:class:`KarError`, nothing written) when it did not.

    With ``features.codebook_size`` > 0, a k-means codebook per kind is fitted on the adapted
    vectors (reused while they are unchanged), saved beside them for ``kar refresh``, and
    each vector's code is published with it (``user_knowledge_code`` / ``item_knowledge_code``).
    A repo that already holds vectors without codes keeps publishing none (with a warning).
    """
    import polars as pl

    from kar.adaptor.codes import KnowledgeCodebooks
    from kar.errors import FeatureStoreError
    from kar.features.engines import sync_batch_engine
    from kar.features.publishing import publish
    from kar.features.repo import enable_codes, read_settings

    ctx = stage_context(stage)
    project = ctx.project
    with timed_stage(project, "publish"):
        paths = [project.knowledge_path(k) for k in ("user", "item")]
        if not all(p.exists() for p in paths):
            raise KarError("no adapted vectors yet: run `kar train` first")
        if require_gain:
            from kar.adaptor.verdict import knowledge_won, verdict_line

            gain = adaptor_gain(project)
            if not knowledge_won(gain):
                raise KarError(f"{verdict_line(gain)}. --require-gain: nothing published")
        _, split = ctx.data
        adapted = pl.read_parquet(paths[0]), pl.read_parquet(paths[1])
        users, items = _with_timestamps(project, split, *adapted)
        # one kind may have no knowledge at all: it is published as nothing (read: missing)
        dim = next((len(f["vector"][0]) for f in adapted if f.height), 0)
        repo_dim = int(read_settings(project.feature_repo)["vector_dim"])
        if dim != repo_dim:
            raise KarError(
                f"the adaptor exports {dim}-dim vectors but {project.feature_repo} declares "
                f"vector_dim {repo_dim}: register a new feature version for the new dimension"
            )
        lineage = knowledge_lineage(project, ctx.store)
        size = project.settings.features.codebook_size
        codebook_path = project.codebook_path
        codebooks = None
        if size:
            try:
                enable_codes(project.feature_repo)
            except FeatureStoreError as exc:  # a repo published before codes existed
                import logging

                logging.getLogger(__name__).warning("%s; publishing without codes", exc)
                size = 0
        if size and not all(f.height for f in adapted):
            import logging

            logging.getLogger(__name__).warning(
                "knowledge codes need vectors of both kinds; publishing without codes"
            )
            size = 0
        if size:
            seed = project.settings.training.seed
            codebooks = KnowledgeCodebooks.fit_or_load(codebook_path, *adapted, size, seed)
            lineage["codebook"] = f"k{size}-seed{seed}@{codebooks.fingerprint}"
        else:
            codebook_path.unlink(missing_ok=True)  # refresh assigns no codes either
            lineage["codebook"] = "none"
        sync_batch_engine(project.feature_repo, project.settings.features)  # kar.yaml's engine
        from kar.features.repo import sync_project_stores

        sync_project_stores(project.feature_repo, project.settings.features)  # and its stores
        report = publish(project.feature_repo, users, items, lineage=lineage, codebooks=codebooks)
    return report


def data_fingerprint(project: ProjectFolder) -> str:
    """Names what the features without knowledge are built from (dataset, split, history
    length and selection), so evaluation runs logged for other data are not reused."""
    from kar.records import stable_hash

    settings = project.settings
    named: list[object] = [
        settings.split.model_dump(),
        settings.dataset.model_dump(),
        settings.training.history_len,
    ]
    if settings.training.history_selection != "recent":  # recent: the fingerprints it had
        named.append(settings.training.history_selection)
    return stable_hash(named, length=16)


def encoded_fingerprint(project: ProjectFolder) -> str:
    """Names the encoded knowledge (file names and contents), so runs with knowledge logged
    for other vectors are not reused."""
    import hashlib

    from kar.records import stable_hash

    files = sorted(project.encoded_dir.glob("*")) if project.encoded_dir.exists() else []
    stats = [[f.name, hashlib.sha256(f.read_bytes()).hexdigest()] for f in files if f.is_file()]
    return stable_hash(stats, length=16)


class EvaluationReport(NamedTuple):
    """What ``run_evaluate`` wrote: the summary (mean ± std per backbone x knowledge),
    the markdown table and the PNG plot."""

    summary: pl.DataFrame
    markdown: Path
    plot: Path


def run_evaluate(
    stage: StageContext | ProjectFolder, *, seeds: list[int] | None = None, progress: bool = True
) -> EvaluationReport:
    """Each backbone without knowledge, with it and with the shuffled control, several
    seeds, beside the baseline; markdown table + PNG plot.

    ``training.tune``: each backbone's configuration is first chosen on validation AUC.
    """
    from kar.models.harness import compare
    from kar.models.report import summarize, write_report

    ctx = stage_context(stage)
    project = ctx.project
    with timed_stage(project, "evaluate"):
        dataset, split = ctx.data
        features = ctr_features(project, dataset, split, with_knowledge=True)
        tr = project.settings.training
        results = compare(
            features,
            backbones=tuple(tr.eval_backbones),
            seeds=tuple(seeds or tr.eval_seeds),
            progress=progress,
            tune=tr.tune,
            runs_file=project.evaluate_runs_path,
            cold_threshold=tr.cold_threshold,
            workers=tr.evaluation_workers(),
            **_evaluation_kwargs(project),
        )
        md, png = write_report(
            results,
            project.reports_dir,
            title=f"{project.settings.name}: AUC without knowledge, with it, and shuffled",
            command="kar evaluate",
            cold_threshold=tr.cold_threshold,
        )
    return EvaluationReport(summarize(results), md, png)
