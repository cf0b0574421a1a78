"""The stages of a kar project, in order, over the Python API of each stage package.

Each function reads what the previous stage left in the project folder and writes its
own artifacts, so the CLI commands can run one at a time or all together
(``quickstart``). Heavy packages are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from kar.data.demo import DEMO_USERS
from kar.errors import ConfigError, DataValidationError, KarError
from kar.project import CONFIG_FILE, ProjectFolder, ProjectSettings
from kar.resources import bundled_dir

if TYPE_CHECKING:
    import polars as pl

    from kar.adaptor import AdaptorConfig
    from kar.data.schema import Dataset, Split
    from kar.encoding import EntityVectors, TextEncoder
    from kar.features.publish import PublishReport
    from kar.generation import GenerationReport, KnowledgeStore
    from kar.generation.backend import ChatMessages, GenerationBackend
    from kar.generation.imports import ImportReport
    from kar.models.inputs import CTRFeatures
    from kar.models.train import TrainResult
    from kar.prompts import Scenario
    from kar.records import GenerationOutput, PromptRecord, SamplingParams

TIMINGS_FILE = "timings.json"


@contextmanager
def timed_stage(project: ProjectFolder, stage: str) -> Iterator[None]:
    """Record the wall time of a stage in ``artifacts/timings.json``."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    path = project.artifacts / TIMINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[stage] = round(seconds, 2)
    path.write_text(json.dumps(timings, indent=2))


def init_project(
    dest: Path,
    *,
    n_users: int = DEMO_USERS,
    seed: int = 0,
    force: bool = False,
    demo: str = "standard",
) -> ProjectFolder:
    """Create a project: demo dataset, scenarios, adaptor configs and a Feast repository.

    ``demo``: ``standard``; ``grounded`` (items.csv gains a ``description``: each film's
    hidden traits in words, quoted into the item-fact prompt); ``oracle`` (the same texts
    also imported as the item knowledge, so the LLM answers only the user questions). Both
    variants are ORACLES: the texts state what the simulation hides (docs/data.md).
    """
    from kar.data import write_demo_dataset
    from kar.data.texts import DEMO_VARIANTS, write_demo_variant
    from kar.features import init_feature_repo
    from kar.features.engines import sync_batch_engine

    dest = Path(dest)
    if demo not in DEMO_VARIANTS:
        raise ConfigError(f"demo variant {demo!r}: expected one of {', '.join(DEMO_VARIANTS)}")
    if (dest / CONFIG_FILE).exists() and not force:
        raise KarError(f"{dest / CONFIG_FILE} already exists (use --force to overwrite)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("prompts", "experts"):
        shutil.copytree(bundled_dir(name), dest / name, dirs_exist_ok=True)
    write_demo_dataset(dest / "data", n_users=n_users, seed=seed)
    oracle_texts = write_demo_variant(dest / "data", demo)
    settings = ProjectSettings()
    if demo != "standard":
        settings.name = f"kar-demo-{demo}"
    # the demo is small (about 3,600 train rows): smaller batches, and each backbone's
    # learning rate and embedding weight decay chosen on validation (cheap at this size)
    settings.training.tune = True
    settings.training.backbone_configs = {"default": {"batch_size": 128}}
    project = ProjectFolder(dest, settings)
    fs = project.settings.features
    init_feature_repo(
        project.feature_repo, project=fs.project, online_store=fs.online_store, registry=fs.registry
    )
    sync_batch_engine(project.feature_repo, fs)
    project.save()
    if oracle_texts is not None:
        # the sentences name genres and decade themselves: without the title line the
        # encoder's vector is about the traits (docs/data.md)
        import_knowledge(project, oracle_texts.resolve(), source="demo-oracle", context=False)
    return project


def load_data(project: ProjectFolder) -> tuple[Dataset, Split]:
    """Load and validate the project's dataset and split it by time (KAR's protocol)."""
    from kar.data import load_demo, load_movielens, load_table_dataset, make_time_split

    ds_cfg = project.settings.dataset
    path = project.path(ds_cfg.path)
    rejects = project.rejects_dir
    if ds_cfg.kind == "demo":
        dataset = load_demo(path)
    elif ds_cfg.kind == "movielens":
        dataset = load_movielens(
            path,
            variant=ds_cfg.variant,
            label_threshold=ds_cfg.label_threshold,
            rejects_dir=rejects,
        )
    else:
        dataset = load_table_dataset(
            path,
            items=project.path(ds_cfg.items) if ds_cfg.items else None,
            users=project.path(ds_cfg.users) if ds_cfg.users else None,
            mapping=ds_cfg.mapping or None,
            label_threshold=ds_cfg.label_threshold,
            rejects_dir=rejects,
        )
    missing = [c for c in ds_cfg.item_text_columns or [] if c not in dataset.items.columns]
    if missing:
        raise DataValidationError(
            f"kar.yaml dataset.item_text_columns names a column the items table lacks; "
            f"columns found: {dataset.items.columns}",
            file=str(dataset.meta.get("files", {}).get("items") or "items table"),
            field=missing[0],
        )
    sp = project.settings.split
    split = make_time_split(
        dataset,
        history_cap=sp.history_cap,
        history_fraction=sp.history_fraction,
        valid_fraction=sp.valid_fraction,
        test_fraction=sp.test_fraction,
    )
    return dataset, split


def load_scenario(project: ProjectFolder) -> Scenario:
    """The scenario kar.yaml names (the project's prompts/ first, then the bundled ones)."""
    from kar.prompts import Scenario

    scenario = Scenario.load(project.settings.scenario, search_dirs=project.prompt_dirs)
    columns = project.settings.dataset.item_text_columns
    if columns is not None:  # kar.yaml names the grounding columns
        scenario = scenario.model_copy(update={"item_text_columns": list(columns)})
    return scenario


def build_prompts(
    project: ProjectFolder, dataset: Dataset, split: Split, scenario: Scenario | None = None
) -> list[PromptRecord]:
    """All user-preference and item-fact prompts of the project's scenario."""
    from kar.prompts import build_item_prompts, build_user_prompts

    scenario = scenario or load_scenario(project)
    users = build_user_prompts(dataset, scenario, split.as_of)
    items = build_item_prompts(dataset, scenario)
    return users + items


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


class LazyBackend:
    """Loads the configured LLM backend on the first ``generate`` call, so a rerun with
    nothing to do costs nothing (see :mod:`kar.generation.factory`)."""

    def __init__(
        self,
        project: ProjectFolder,
        store: KnowledgeStore | None = None,
        prompts: Sequence[PromptRecord] = (),
    ) -> None:
        self._project = project
        self._store = store
        self._prompts = list(prompts)
        self._backend: GenerationBackend | None = None

    @property
    def model_name(self) -> str:
        from kar.generation.factory import backend_model_name

        return backend_model_name(self._project.settings.generation)

    def _loaded(self) -> GenerationBackend:
        if self._backend is None:
            from kar.generation.factory import make_backend

            self._backend = make_backend(
                self._project.settings.generation, store=self._store, prompts=self._prompts
            )
        return self._backend

    def generate(self, batch: list[ChatMessages], params: SamplingParams) -> list[GenerationOutput]:
        return self._loaded().generate(batch, params)

    def __getattr__(self, name: str) -> object:
        """Other attributes are the loaded backend's (e.g. the Ray backend's
        ``answer_stream``; the runner looks only once it has prompts to answer)."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loaded(), name)


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
    from kar.records import KIND_ITEM, KIND_USER

    store = store or KnowledgeStore(project.knowledge_store_url)
    imported = store.imported_keys()  # `kar knowledge import` texts: the LLM is not asked
    prompts = [
        p for p in prompts if (p.scenario, p.entity_type, p.entity_id, p.kind) not in imported
    ]
    backend = LazyBackend(project, store, prompts)
    gen = project.settings.generation
    reports = {}
    for kind in (KIND_USER, KIND_ITEM):
        todo = [p for p in prompts if p.kind == kind]
        if todo:
            reports[kind] = generate_knowledge(
                todo,
                backend,
                store,
                sampling_params(project, kind, scenario),
                batch_size=gen.batch_size,
                max_retries=gen.max_retries,
                truncated=gen.truncated,
                progress=progress,
            )
    return reports


def run_generate(
    project: ProjectFolder,
    *,
    limit: int | None = None,
    kinds: set[str] | None = None,
    progress: bool = True,
    data: tuple[Dataset, Split] | None = None,
    scenario: Scenario | None = None,
    store: KnowledgeStore | None = None,
) -> dict[str, GenerationReport]:
    """Every user-preference and item-fact prompt of the project (at most ``limit`` per kind).

    ``kinds`` keeps only those knowledge kinds (two processes can then share the kinds of
    one project: the store takes concurrent writers). ``data``, ``scenario``, ``store``:
    already loaded (:class:`kar.Project` loads them once); loaded here when None.
    """
    with timed_stage(project, "generate"):
        dataset, split = data or load_data(project)
        scenario = scenario or load_scenario(project)
        prompts = build_prompts(project, dataset, split, scenario)
        from kar.collective.project import apply_modes

        prompts = apply_modes(project, dataset, split, prompts)  # collective knowledge, if set
        if kinds is not None:
            prompts = [p for p in prompts if p.kind in kinds]
        if limit is not None:
            present = {p.kind for p in prompts}
            prompts = [p for k in present for p in [q for q in prompts if q.kind == k][:limit]]
        return answer_prompts(project, prompts, store=store, scenario=scenario, progress=progress)


def import_knowledge(
    project: ProjectFolder,
    path: str | Path,
    *,
    source: str | None = None,
    context: bool = True,
    data: tuple[Dataset, Split] | None = None,
    scenario: Scenario | None = None,
    store: KnowledgeStore | None = None,
) -> ImportReport:
    """Bring your own user / item texts into the knowledge store (``kar knowledge import``).

    Ids are checked against the project's dataset; bad rows go to ``artifacts/rejects/``.
    Stored with the context an LLM answer has (item: its description line; user: the
    history before their as-of instant; ``context=False``: none;
    :mod:`kar.generation.imports`). ``data``,
    ``scenario``, ``store``: already loaded (:class:`kar.Project`); loaded here when None.
    A relative ``path`` not found from the working folder is taken in the project folder.
    """
    from kar.generation import KnowledgeStore
    from kar.generation.imports import import_texts

    dataset, split = data or load_data(project)
    file = Path(path) if Path(path).exists() else project.path(str(path))
    return import_texts(
        file,
        store or KnowledgeStore(project.knowledge_store_url),
        dataset,
        scenario or load_scenario(project),
        source=source,
        rejects_dir=project.rejects_dir,
        as_of=split.as_of,
        context=context,
    )


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


def run_encode(
    project: ProjectFolder, *, progress: bool = True, store: KnowledgeStore | None = None
) -> EntityVectors:
    """Encode every answered prompt (history + reasoning for users, facts for items)."""
    from kar.encoding import encode_knowledge
    from kar.generation import KnowledgeStore

    with timed_stage(project, "encode"):
        store = store or KnowledgeStore(project.knowledge_store_url)
        answers = store.answers(scenario=project.settings.scenario)
        if answers.height == 0:
            raise KarError("the knowledge store has no answers yet: run `kar generate` first")
        from kar.collective.project import member_knowledge

        answers = member_knowledge(project, answers)  # members get their cluster's knowledge
        vectors = encode_knowledge(answers, make_encoder(project), progress=progress)
        vectors.save(project.encoded_dir)
    return vectors


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
    return CTRFeatures.build(
        dataset,
        split,
        history_len=project.settings.training.history_len,
        knowledge_users=users,
        knowledge_items=items,
    )


def adaptor_config(project: ProjectFolder) -> AdaptorConfig:
    """The adaptor config named in kar.yaml: the project's experts/ first, then the bundled one."""
    from kar.adaptor import AdaptorConfig

    name = project.settings.training.adaptor
    local = project.root / "experts" / f"{name}.yaml"
    return AdaptorConfig.load(
        local if local.exists() else project.path(name) if "/" in name else name
    )


def run_train(
    project: ProjectFolder, *, progress: bool = True, data: tuple[Dataset, Split] | None = None
) -> TrainResult:
    """Train the adaptor jointly with a backbone; save it and export one vector per entity.

    With ``training.warm_start`` the backbone is first trained without knowledge, and the
    knowledge model starts from it (see :func:`kar.models.train.train_ctr`).
    """
    from kar.encoding import EntityVectors
    from kar.models.train import train_ctr

    with timed_stage(project, "train"):
        dataset, split = data or load_data(project)
        features = ctr_features(project, dataset, split, with_knowledge=True)
        tr = project.settings.training
        config = tr.backbone_config(tr.backbone)
        init_state = None
        if tr.warm_start:
            plain = train_ctr(
                features.without_knowledge(), tr.backbone, config, seed=tr.seed, progress=progress
            )
            init_state = plain.model.state_dict()
        result = train_ctr(
            features,
            tr.backbone,
            config,
            adaptor_config=adaptor_config(project),
            seed=tr.seed,
            progress=progress,
            init_state=init_state,
            fallback_state=init_state,
        )
        vectors = EntityVectors.load(project.encoded_dir)
        trained = result.trained_adaptor(encoder=vectors.encoder_id)
        trained.save(project.adaptor_dir)
        from kar.adaptor.codes import CODEBOOK_FILE

        # the codebook belongs to the previous vectors: `kar publish` fits a new one
        (project.knowledge_dir / CODEBOOK_FILE).unlink(missing_ok=True)
        users, items = trained.export(vectors.users, vectors.items)
        project.knowledge_dir.mkdir(parents=True, exist_ok=True)
        users.write_parquet(project.knowledge_dir / "user_knowledge.parquet")
        items.write_parquet(project.knowledge_dir / "item_knowledge.parquet")
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
    """What produced the published vectors: prompt version, LLM, encoder, adaptor run."""
    from kar.generation import KnowledgeStore
    from kar.records import stable_hash

    store = store or KnowledgeStore(project.knowledge_store_url)
    answers = store.answers(scenario=project.settings.scenario)
    adaptor = json.loads((project.adaptor_dir / "config.json").read_text())
    return {
        "prompt_version": ",".join(sorted(set(answers["prompt_version"].to_list()))),
        "llm": ",".join(sorted(set(answers["model"].to_list()))),
        "encoder": str(adaptor.get("encoder")),
        "adaptor": f"{adaptor['adaptor']['type']}-{adaptor['backbone']}-seed{adaptor['seed']}"
        f"@{stable_hash(adaptor, length=8)}",
    }


def run_publish(
    project: ProjectFolder,
    *,
    data: tuple[Dataset, Split] | None = None,
    store: KnowledgeStore | None = None,
) -> PublishReport:
    """Publish the adapted vectors to Feast: offline Parquet partition, apply, materialise.

    With ``features.codebook_size`` > 0, a k-means codebook per kind is fitted on the adapted
    vectors (reused while they are unchanged), saved beside them for ``kar refresh``, and
    each vector's code is published with it (``user_knowledge_code`` / ``item_knowledge_code``).
    A repo that already holds vectors without codes keeps publishing none (with a warning).
    """
    import polars as pl

    from kar.adaptor.codes import CODEBOOK_FILE, KnowledgeCodebooks
    from kar.errors import FeatureStoreError
    from kar.features import publish
    from kar.features.engines import sync_batch_engine
    from kar.features.repo import enable_codes, read_settings

    with timed_stage(project, "publish"):
        paths = [project.knowledge_dir / f"{k}_knowledge.parquet" for k in ("user", "item")]
        if not all(p.exists() for p in paths):
            raise KarError("no adapted vectors yet: run `kar train` first")
        _, split = data or load_data(project)
        adapted = pl.read_parquet(paths[0]), pl.read_parquet(paths[1])
        users, items = _with_timestamps(project, split, *adapted)
        dim = len(users["vector"][0])
        repo_dim = int(read_settings(project.feature_repo)["vector_dim"])
        if dim != repo_dim:
            raise KarError(
                f"the adaptor exports {dim}-dim vectors but {project.feature_repo} declares "
                f"vector_dim {repo_dim}: register a new feature version for the new dimension"
            )
        lineage = knowledge_lineage(project, store)
        size = project.settings.features.codebook_size
        codebook_path = project.knowledge_dir / CODEBOOK_FILE
        codebooks = None
        if size:
            try:
                enable_codes(project.feature_repo)
            except FeatureStoreError as exc:  # a repo published before codes existed
                import logging

                logging.getLogger(__name__).warning("%s; publishing without codes", exc)
                size = 0
        if size:
            seed = project.settings.training.seed
            codebooks = KnowledgeCodebooks.fit_or_load(codebook_path, *adapted, size, seed)
            lineage["codebook"] = f"k{size}-seed{seed}@{codebooks.fingerprint}"
        else:
            codebook_path.unlink(missing_ok=True)  # refresh assigns no codes either
            lineage["codebook"] = "none"
        sync_batch_engine(project.feature_repo, project.settings.features)  # kar.yaml's engine
        report = publish(project.feature_repo, users, items, lineage=lineage, codebooks=codebooks)
    return report


def _data_fingerprint(project: ProjectFolder) -> str:
    """Names what the features without knowledge are built from (dataset, split, history
    length), so evaluation runs logged for other data are not reused."""
    from kar.records import stable_hash

    settings = project.settings
    return stable_hash(
        [settings.split.model_dump(), settings.dataset.model_dump(),
         settings.training.history_len],
        length=16,
    )  # fmt: skip


def _encoded_fingerprint(project: ProjectFolder) -> str:
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
    project: ProjectFolder,
    *,
    seeds: list[int] | None = None,
    progress: bool = True,
    data: tuple[Dataset, Split] | None = None,
) -> EvaluationReport:
    """Each backbone without knowledge, with it and with the shuffled control, several
    seeds, beside the baseline; markdown table + PNG plot.

    ``training.tune``: each backbone's configuration is first chosen on validation AUC.
    """
    from kar.models.evaluation import compare, summarize, write_report
    from kar.models.registry import available_models

    with timed_stage(project, "evaluate"):
        dataset, split = data or load_data(project)
        features = ctr_features(project, dataset, split, with_knowledge=True)
        tr = project.settings.training
        results = compare(
            features,
            backbones=tuple(tr.eval_backbones),
            seeds=tuple(seeds or tr.eval_seeds),
            adaptor_config=adaptor_config(project),
            progress=progress,
            tune=tr.tune,
            runs_file=project.reports_dir / "evaluate_runs.jsonl",
            fingerprint=_data_fingerprint(project),
            knowledge_fingerprint=_encoded_fingerprint(project),
            # every backbone's config (not only those evaluated), so processes that share
            # the backbones of one evaluation share its run log
            model_configs={b: tr.backbone_config(b) for b in available_models()},
            warm_start=tr.warm_start,
            cold_threshold=tr.cold_threshold,
        )
        md, png = write_report(
            results,
            project.reports_dir,
            title=f"{project.settings.name}: AUC without knowledge, with it, and shuffled",
            command="kar evaluate",
            cold_threshold=tr.cold_threshold,
        )
    return EvaluationReport(summarize(results), md, png)
