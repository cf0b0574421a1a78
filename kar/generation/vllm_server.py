"""Start and stop a local ``vllm serve`` (OpenAI-compatible) on a kar model folder.

For :class:`~kar.generation.openai_backend.OpenAIBackend` against a server on this
machine, and for its tests. The API key, if any, is passed to the server through the
``VLLM_API_KEY`` environment variable, never on the command line (where ``ps`` shows it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from kar.errors import ConfigError, GenerationError
from kar.generation.model_files import resolve_model


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VLLMServer:
    """``with VLLMServer(dtype="float32") as server: server.base_url`` — a running server.

    ``served_name`` is the model name clients send; ``api_key_env`` names the variable
    holding the key the server requires (None: no key). The server's output goes to
    ``log_path`` (a temporary file by default), whose tail is in the error if it fails.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        served_name: str = "smollm2",
        dtype: str = "bfloat16",
        port: int | None = None,
        api_key_env: str | None = None,
        enforce_eager: bool = True,
        cpu_kv_cache_gb: int = 1,
        startup_timeout_s: float = 600.0,
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.path = resolve_model(model)
        self.served_name = served_name
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        self.args = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.path), "--served-model-name", served_name,
            "--dtype", dtype, "--host", "127.0.0.1", "--port", str(self.port),
            *(["--enforce-eager"] if enforce_eager else []), *(extra_args or []),
        ]  # fmt: skip
        self.env = dict(os.environ)
        self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gb))
        self.env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(f"{api_key_env} is not set: the server's API key comes from it")
            self.env["VLLM_API_KEY"] = key
        else:
            self.env.pop("VLLM_API_KEY", None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> VLLMServer:
        """Start the server and wait until ``/health`` answers (or raise with its log)."""
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout_s
        health = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise GenerationError(
                    f"vllm serve exited ({self.process.returncode}):\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        self.stop()
        raise GenerationError(
            f"vllm serve did not answer {health} within {self.startup_timeout_s:g}s:\n{self.tail()}"
        )

    def tail(self, lines: int = 30) -> str:
        """The last lines the server printed."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the server (and its workers)."""
        if self.process is None or self.process.poll() is not None:
            return
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
