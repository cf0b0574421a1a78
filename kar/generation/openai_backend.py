"""Chat completions against any OpenAI-compatible server (``vllm serve``, hosted APIs).

Standard library only (``urllib`` + a thread pool). Bounded concurrency, retries with
exponential backoff (and ``Retry-After``) on 429, 5xx, connection errors and timeouts;
malformed responses fail at once. The API key is read from an environment variable,
sent only in the ``Authorization`` header, and never logged or shown in errors/repr.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from kar.errors import ConfigError, GenerationError
from kar.generation.backend import ChatMessages
from kar.records import GenerationOutput, SamplingParams

if TYPE_CHECKING:
    from kar.project import GenerationSettings

log = logging.getLogger(__name__)


class OpenAIBackend:
    """:class:`~kar.generation.backend.GenerationBackend` over ``POST {base_url}/chat/completions``.

    ``model``: the server's model name. ``api_key_env``: the environment variable holding
    the key (unset: no ``Authorization`` header, fine for a local ``vllm serve``).
    ``max_concurrency`` requests run at once; each gets ``timeout_s`` and up to
    ``max_retries`` retries, waiting ``backoff_s * 2**attempt`` (capped at
    ``max_backoff_s``, or the server's ``Retry-After``). ``vllm_extras`` also sends
    ``top_k`` and ``repetition_penalty`` (vLLM's extensions; turn off for hosted APIs
    that reject unknown fields). ``model_name`` (store key) defaults to ``openai:<model>``.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        vllm_extras: bool = True,
        model_name: str | None = None,
    ) -> None:
        if not model:
            raise ConfigError("OpenAIBackend needs the server's model name")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ConfigError(
                "need max_concurrency >= 1, max_retries >= 0 and timeout_s > 0, got "
                f"{max_concurrency}, {max_retries}, {timeout_s}"
            )
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.vllm_extras = vllm_extras
        self.model_name = model_name or f"openai:{model}"

    @classmethod
    def from_settings(cls, gen: GenerationSettings) -> OpenAIBackend:
        """The backend ``generation.backend: openai`` configures (``generation.openai``)."""
        o = gen.openai
        return cls(
            model=o.model or "",
            base_url=o.base_url,
            api_key_env=o.api_key_env,
            max_concurrency=o.max_concurrency,
            timeout_s=o.timeout_s,
            max_retries=o.max_retries,
            vllm_extras=o.vllm_extras,
        )

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend({self.model_name!r}, url={self.url!r}, key_env={self.api_key_env!r})"

    def payload(self, messages: ChatMessages, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        }
        if self.vllm_extras:
            body["repetition_penalty"] = params.repetition_penalty
            if params.top_k:
                body["top_k"] = params.top_k
        return body

    def generate(self, batch: list[ChatMessages], params: SamplingParams) -> list[GenerationOutput]:
        if not batch:
            return []
        workers = min(self.max_concurrency, len(batch))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kar-openai") as pool:
            futures = [pool.submit(self._complete, m, params) for m in batch]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    # -- one request ---------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _complete(self, messages: ChatMessages, params: SamplingParams) -> GenerationOutput:
        data = json.dumps(self.payload(messages, params)).encode("utf-8")
        last_error = ""
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            request = urllib.request.Request(
                self.url, data=data, headers=self._headers(), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                return self._parse(raw)
            except urllib.error.HTTPError as exc:
                body = exc.read()[:300].decode("utf-8", "replace")
                last_error = f"HTTP {exc.code}: {body}"
                if exc.code != 429 and exc.code < 500:
                    raise GenerationError(
                        f"{self.model_name}: {self.url} answered {last_error}"
                    ) from exc
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(self.max_backoff_s, float(retry_after))
            except TimeoutError:
                last_error = f"timed out after {self.timeout_s:g}s"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, TimeoutError):
                    last_error = f"timed out after {self.timeout_s:g}s"
                else:
                    last_error = f"connection failed: {exc.reason}"
            if attempt < self.max_retries:
                log.warning("%s: %s; retry %d/%d in %.1fs", self.url, last_error, attempt + 1,
                            self.max_retries, wait)  # fmt: skip
                time.sleep(wait)
        raise GenerationError(
            f"{self.model_name}: {self.url} failed after {self.max_retries + 1} attempt(s): "
            f"{last_error}"
        )

    def _parse(self, raw: bytes) -> GenerationOutput:
        try:
            body = json.loads(raw)
            choice = body["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError(f"message.content is {type(text).__name__}, not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            snippet = raw[:200].decode("utf-8", "replace")
            raise GenerationError(
                f"{self.model_name}: malformed response from {self.url} ({exc!r}): {snippet!r}"
            ) from exc
        usage = body.get("usage") or {}
        reason = choice.get("finish_reason")
        return GenerationOutput(
            text=text.strip(),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if reason == "length" else "stop",
            meta={"finish_reason_raw": reason} if reason not in ("stop", "length") else {},
        )
