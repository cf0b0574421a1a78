"""Chat completions against any OpenAI-compatible server (``vllm serve``, hosted APIs).

Standard library only (``urllib`` + a thread pool). Bounded concurrency, retries with
exponential backoff (and ``Retry-After``) on 429, 5xx, connection errors and timeouts;
malformed responses fail at once. The API key is read from an environment variable,
sent only in the ``Authorization`` header, and registered with :mod:`kar.redaction`: no
error or log line shows it, even when a failing server echoes the request headers back. An
unset variable is warned about once (its name, never a value).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from kar.errors import ConfigError, GenerationError
from kar.generation.backend import ChatMessages
from kar.generation.runner import PartialAnswers
from kar.records import GenerationOutput, SamplingParams
from kar.redaction import install_log_filter, redact, redact_url, register_secret

if TYPE_CHECKING:
    from kar.project import GenerationSettings

log = logging.getLogger(__name__)
_warned_lock = threading.Lock()
_warned_unset: set[str] = set()


def api_key(env: str | None) -> str | None:
    """The key in variable ``env`` (registered as a secret), or None; an unset or empty
    variable is warned about once per process, by name."""
    if not env:
        return None
    key = os.environ.get(env)
    if key:
        register_secret(key)
        return key
    with _warned_lock:
        first = env not in _warned_unset
        _warned_unset.add(env)
    if first:
        log.warning(
            "%s (generation.openai.api_key_env) is not set: requests are sent without an "
            "Authorization header (fine for a local vllm serve, refused by hosted APIs)",
            env,
        )
    return None


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
        install_log_filter()
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.shown_url = redact_url(self.url)  # registers a password in base_url, if any
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
        return (
            f"OpenAIBackend({self.model_name!r}, url={self.shown_url!r}, "
            f"key_env={self.api_key_env!r})"
        )

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
        """One answer per conversation, ``max_concurrency`` requests at a time. On Ctrl-C
        the requests not sent are dropped, those under way finish without retries, and
        :class:`~kar.generation.runner.PartialAnswers` carries every answer received."""
        if not batch:
            return []
        stop = threading.Event()  # set on Ctrl-C: no more retries
        workers = min(self.max_concurrency, len(batch))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kar-openai") as pool:
            futures = [pool.submit(self._complete, m, params, stop) for m in batch]
            try:
                return _in_order(futures)
            except KeyboardInterrupt:
                stop.set()
                raise PartialAnswers(_received(pool, futures)) from None
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    # -- one request ---------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = api_key(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _complete(
        self, messages: ChatMessages, params: SamplingParams, stop: threading.Event | None = None
    ) -> GenerationOutput:
        data = json.dumps(self.payload(messages, params)).encode("utf-8")
        stop = stop or threading.Event()
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
                last_error = redact(f"HTTP {exc.code}: {body}")
                if exc.code != 429 and exc.code < 500:
                    raise GenerationError(
                        f"{self.model_name}: {self.shown_url} answered {last_error}"
                    ) from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(self.max_backoff_s, float(retry_after))
            except TimeoutError:
                last_error = f"timed out after {self.timeout_s:g}s"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, TimeoutError):
                    last_error = f"timed out after {self.timeout_s:g}s"
                else:
                    last_error = redact(f"connection failed: {exc.reason}")
            if attempt == self.max_retries or stop.is_set():
                break
            log.warning("%s: %s; retry %d/%d in %.1fs", self.shown_url, last_error, attempt + 1,
                        self.max_retries, wait)  # fmt: skip
            if stop.wait(wait):  # Ctrl-C while waiting: no retry
                break
        raise GenerationError(
            f"{self.model_name}: {self.shown_url} failed after {attempt + 1} attempt(s): "
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
                redact(
                    f"{self.model_name}: malformed response from {self.shown_url} ({exc!r}): "
                    f"{snippet!r}"
                )
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


def _in_order(futures: list[Future[GenerationOutput]]) -> list[GenerationOutput]:
    """Each future's answer, in order (the first failure raised). Waits in short steps:
    the OS may hand Ctrl-C's SIGINT to a worker thread, and the main thread raises
    KeyboardInterrupt only when it wakes."""
    out = []
    for future in futures:
        while not wait([future], timeout=0.2).done:
            pass
        out.append(future.result())
    return out


def _received(
    pool: ThreadPoolExecutor, futures: list[Future[GenerationOutput]]
) -> list[GenerationOutput | None]:
    """Each future's answer once the requests under way are done (Ctrl-C pressed again:
    those back by then); None where no answer came back."""
    with contextlib.suppress(KeyboardInterrupt):
        pool.shutdown(wait=True, cancel_futures=True)
    return [
        f.result() if f.done() and not f.cancelled() and f.exception() is None else None
        for f in futures
    ]
