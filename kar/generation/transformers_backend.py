"""CPU/GPU generation with Hugging Face transformers (the default backend)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kar.errors import ConfigError, GenerationError
from kar.generation.backend import ChatMessages
from kar.generation.model_files import model_name_for, resolve_model
from kar.records import GenerationOutput, SamplingParams

if TYPE_CHECKING:
    from kar.project import GenerationSettings

log = logging.getLogger(__name__)

Dtype = Literal["auto", "bfloat16", "float32"]


class TransformersBackend:
    """Chat generation with ``AutoModelForCausalLM``: left-padded batches, greedy or sampled.

    ``model``: ``None``/``"smollm2"`` (the bundled SmolLM2-135M-Instruct) or a local HF
    folder. ``threads`` sets ``torch.set_num_threads`` (1 is fastest on small shared CPUs).
    ``cpu_kernels``: on a CPU, run the linear layers over oneDNN-prepacked weights and
    grouped-query attention without copying the cache (:mod:`kar.generation.cpu_kernels`;
    a bf16 step ~1.3x faster, and wide speculative passes cost about a one-token step);
    ``False`` keeps PyTorch's default kernels.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        dtype: Dtype = "auto",
        threads: int = 1,
        device: str = "cpu",
        model_name: str | None = None,
        cpu_kernels: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from kar.generation.precision import backend_dtype

        dtype = backend_dtype(dtype)
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        self.path = resolve_model(model)
        self.model_name = model_name or model_name_for(model, dtype)
        self.dtype = dtype
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, padding_side="left")
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"model folder {self.path} has no chat template (not a chat model)")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype))
        self.model.to(device).eval()
        self.cpu_kernels = cpu_kernels and torch.device(device).type == "cpu"
        if self.cpu_kernels:
            from kar.generation.cpu_kernels import pack_linear_weights, use_cpu_gqa_attention

            packed = pack_linear_weights(self.model)
            gqa = use_cpu_gqa_attention(self.model)
            log.debug("%s: %d linear layers prepacked, GQA attention %s", self.path, packed, gqa)
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        eos_ids = [*eos_ids, self.tokenizer.eos_token_id]
        self.eos_token_ids = {int(i) for i in eos_ids if i is not None}
        if not self.eos_token_ids:
            raise ConfigError(f"model folder {self.path} defines no end-of-sequence token")

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> TransformersBackend:
        """The backend ``generation.backend: transformers`` configures."""
        return cls(
            model=gen.model, dtype=gen.dtype, threads=gen.threads, cpu_kernels=gen.cpu_kernels
        )

    def __repr__(self) -> str:
        return f"TransformersBackend({self.model_name!r}, path={str(self.path)!r})"

    def render(self, messages: ChatMessages) -> str:
        """The exact prompt text the model sees (chat template + generation prompt)."""
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
        )

    def generate(self, batch: list[ChatMessages], params: SamplingParams) -> list[GenerationOutput]:
        import torch

        if not batch:
            return []
        texts = [self.render(messages) for messages in batch]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        kwargs: dict[str, object] = {
            "max_new_tokens": params.max_new_tokens,
            "repetition_penalty": params.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.eos_token_ids),
        }
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(params.seed)
            kwargs.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or None,
            )
        try:
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
        except RuntimeError as exc:  # e.g. out of memory, prompt longer than the context
            raise GenerationError(f"{self.model_name}: generation failed: {exc}") from exc
        prompt_len = enc["input_ids"].shape[1]
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, n_prompt in zip(out[:, prompt_len:].tolist(), prompt_tokens, strict=True):
            stop = next((i for i, t in enumerate(row) if t in self.eos_token_ids), None)
            tokens = row if stop is None else row[:stop]
            results.append(
                GenerationOutput(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    prompt_tokens=int(n_prompt),
                    completion_tokens=len(tokens) + (stop is not None),  # EOS counts
                    finish_reason="stop" if stop is not None else "length",
                )
            )
        return results
