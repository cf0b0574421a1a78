"""No secret kar knows is ever shown: API keys echoed back by a failing server, Redis and
PostgreSQL URL passwords; and Redis URL faults are one-line errors, never a traceback.

The hosted API here is a STAND-IN: a stdlib HTTP server in a thread standing in for an
OpenAI-compatible service, which answers 500 with the request headers echoed in its
body (as some proxies and debug servers do). Everything else is real: the ``kar`` CLI in a
subprocess, the local Redis at 127.0.0.1:6379 (skipped when down), closed ports for
unreachable servers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from kar.redaction import install_log_filter, redact, redact_url, register_secret

KAR = str(Path(sys.executable).parent / "kar")
PLANTED_KEY = "sk-planted-XYZ123"


def closed_port() -> int:
    """A local port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_kar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KAR_", "OPENAI_"))}
    base.update(OMP_NUM_THREADS="1", COLUMNS="80", **(env or {}))
    return subprocess.run(
        [KAR, *args], capture_output=True, text=True, env=base, timeout=300, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *, secret: str) -> str:
    """Exit code 1, one ``error:`` line on stdout, no traceback, no ``secret`` anywhere."""
    both = result.stdout + result.stderr
    assert result.returncode == 1, both
    assert "Traceback" not in both
    assert secret not in both
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), both
    return lines[0]


# -- the redaction helper itself ---------------------------------------------------------


def test_redact_hides_registered_secrets_and_credential_shapes() -> None:
    register_secret("tok-registered-4242")
    text = (
        "echo: tok-registered-4242 | redis://:pw1@h:1/0 | postgresql://u:p%40ss@h/db | "
        "{'Authorization': 'Bearer abc.def-123'} | x-api-key: kkkk1 | ?api_key=qqqq2&n=1"
    )
    out = redact(text)
    for secret in ("tok-registered-4242", "pw1", "p%40ss", "abc.def-123", "kkkk1", "qqqq2"):
        assert secret not in out
    assert "redis://:***@h:1/0" in out and "postgresql://u:***@h/db" in out
    assert "&n=1" in out  # only the secret goes, not what follows it
    harmless = "http://127.0.0.1:8000/v1 user@example.com ratio 3:4 redis://h:6379/0"
    assert redact(harmless) == harmless


def test_redact_url_registers_the_password_for_later_messages() -> None:
    assert redact_url("rediss://kar:Pw-later-777@cache:6380/1") == "rediss://kar:***@cache:6380/1"
    assert redact("server said: wrong password Pw-later-777") == "server said: wrong password ***"


def test_log_records_of_every_kar_logger_are_redacted(caplog) -> None:
    install_log_filter()
    register_secret("sk-log-secret-999")
    with caplog.at_level(logging.WARNING):
        logging.getLogger("kar.generation.some_child").warning("echo %s", "sk-log-secret-999")
        try:
            raise RuntimeError("boom sk-log-secret-999")
        except RuntimeError:
            logging.getLogger("kar.refresh").exception("failed")
    assert "sk-log-secret-999" not in caplog.text
    assert "echo ***" in caplog.text and "boom ***" in caplog.text


# -- an OpenAI-compatible server that echoes the request headers ----------------------------


class StandInHostedAPI(BaseHTTPRequestHandler):
    """Stand-in for a hosted OpenAI-compatible API: always 500, request headers echoed."""

    seen_auth: list[str] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        StandInHostedAPI.seen_auth.append(self.headers.get("Authorization", ""))
        body = json.dumps({"error": "upstream crashed", "request": dict(self.headers)}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandInHostedAPI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def make_project(root: Path, **settings: object) -> Path:
    """``kar init`` (the real CLI), then top-level kar.yaml settings replaced."""
    result = run_kar("init", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    config = root / "kar.yaml"
    data = yaml.safe_load(config.read_text())
    data.update(settings)
    config.write_text(yaml.safe_dump(data))
    return root


def openai_project(root: Path, base_url: str) -> Path:
    data = yaml.safe_load((make_project(root) / "kar.yaml").read_text())
    data["generation"]["backend"] = "openai"
    data["generation"]["openai"] = {
        "base_url": base_url,
        "model": "stand-in",
        "api_key_env": "KAR_TEST_KEY",
        "max_retries": 1,
    }
    (root / "kar.yaml").write_text(yaml.safe_dump(data))
    return root


def files_holding(root: Path, secret: str) -> list[Path]:
    needle = secret.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_an_api_key_echoed_by_a_failing_server_is_never_shown(
    echo_server: str, tmp_path: Path
) -> None:
    project = openai_project(tmp_path / "p", echo_server)
    StandInHostedAPI.seen_auth.clear()
    result = run_kar(
        "generate", "-p", str(project), "--limit", "1", env={"KAR_TEST_KEY": PLANTED_KEY}
    )
    both = result.stdout + result.stderr
    assert f"Bearer {PLANTED_KEY}" in StandInHostedAPI.seen_auth  # the key was sent...
    assert result.returncode == 1 and "Traceback" not in both
    assert PLANTED_KEY not in both  # ...echoed back, and shown nowhere
    assert "retry 1/1" in result.stderr and "Bearer ***" in result.stderr  # the retry line
    assert "failed after 2 attempt(s)" in result.stdout and "Bearer ***" in result.stdout
    assert files_holding(project, PLANTED_KEY) == []  # knowledge DB, reports, logs included
    assert (project / "artifacts" / "knowledge.db").is_file()


def test_an_unset_key_variable_is_warned_about_once_by_name(
    echo_server: str, tmp_path: Path
) -> None:
    project = openai_project(tmp_path / "p", echo_server)
    result = run_kar("generate", "-p", str(project), "--limit", "2")
    assert result.returncode == 1
    assert result.stderr.count("KAR_TEST_KEY (generation.openai.api_key_env) is not set") == 1


# -- Redis URLs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("secrets") / "p")


def test_a_redis_url_password_is_never_shown(plain_project: Path) -> None:
    url = f"redis://:PLANTED-redis-pw@127.0.0.1:{closed_port()}/0"
    line = assert_one_line_error(
        run_kar("refresh", "stream", "-p", str(plain_project), "--url", url),
        secret="PLANTED-redis-pw",
    )
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in line


def test_a_redis_url_from_the_environment_is_redacted_too(plain_project: Path) -> None:
    url = f"redis://kar:PLANTED-env-pw@127.0.0.1:{closed_port()}/0"
    result = run_kar("refresh", "stream", "-p", str(plain_project), env={"KAR_REDIS_URL": url})
    line = assert_one_line_error(result, secret="PLANTED-env-pw")
    assert "redis://kar:***@127.0.0.1:" in line


def test_a_url_that_is_not_redis_is_a_one_line_error(plain_project: Path) -> None:
    result = run_kar("refresh", "stream", "-p", str(plain_project), "--url", "http://nope")
    line = assert_one_line_error(result, secret="\x00")
    assert "bad Redis URL http://nope" in line and "redis://, rediss://, unix://" in line


def redis_up() -> bool:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2).ping()
    except redis.RedisError:
        return False
    return True


@pytest.mark.parametrize("user", ["", "kar-nobody"])
def test_a_refused_redis_auth_is_redacted(plain_project: Path, user: str) -> None:
    if not redis_up():
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    url = f"redis://{user}:PLANTED-auth-pw@127.0.0.1:6379/0"
    line = assert_one_line_error(
        run_kar("refresh", "stream", "-p", str(plain_project), "--url", url),
        secret="PLANTED-auth-pw",
    )
    # the local server has no password: AUTH says so; with one, it says the pair is wrong
    assert f"Redis at redis://{user}:***@127.0.0.1:6379/0 refused the credentials" in line


# -- a PostgreSQL knowledge store URL ------------------------------------------------------


def test_a_postgres_password_is_never_shown(tmp_path: Path) -> None:
    port = closed_port()
    literal = make_project(
        tmp_path / "literal",
        knowledge_store=f"postgresql+psycopg://kar:PLANTED-pg-pw@127.0.0.1:{port}/x",
    )
    line = assert_one_line_error(
        run_kar("generate", "-p", str(literal), "--limit", "1"), secret="PLANTED-pg-pw"
    )
    assert f"cannot open knowledge store postgresql+psycopg://kar:***@127.0.0.1:{port}/x" in line
    from_env = make_project(
        tmp_path / "env",
        knowledge_store=f"postgresql+psycopg://kar:${{KAR_PG_PW}}@127.0.0.1:{port}/x",
    )
    result = run_kar("refresh", "-p", str(from_env), env={"KAR_PG_PW": "PLANTED-pg-env"})
    assert "kar:***@127.0.0.1" in assert_one_line_error(result, secret="PLANTED-pg-env")


# -- a password-protected Redis of our own ---------------------------------------------------

PRIVATE_PW = "PLANTED-private-pw"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A real ``redis-server`` on a free port with ``requirepass`` (skipped if not installed)."""
    import shutil
    import time

    redis = pytest.importorskip("redis")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = closed_port()
    args = [binary, "--port", str(port), "--requirepass", PRIVATE_PW, "--save", ""]
    server = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=PRIVATE_PW, socket_connect_timeout=1)
    for _ in range(50):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    server.port = port  # type: ignore[attr-defined]
    yield server
    server.terminate()
    server.wait(timeout=10)


def test_a_wrong_password_on_a_protected_redis_is_redacted(
    plain_project: Path, private_redis: subprocess.Popen
) -> None:
    url = f"redis://:PLANTED-wrong-pw@127.0.0.1:{private_redis.port}/0"  # type: ignore[attr-defined]
    line = assert_one_line_error(
        run_kar("refresh", "stream", "-p", str(plain_project), "--url", url),
        secret="PLANTED-wrong-pw",
    )
    assert "refused the credentials" in line and "invalid username-password pair" in line


def test_redis_lost_mid_run_is_a_redacted_error(
    plain_project: Path, private_redis: subprocess.Popen
) -> None:
    from kar.errors import KarError
    from kar.project import ProjectFolder
    from kar.refresh.stream import StreamRefresher

    port = private_redis.port  # type: ignore[attr-defined]
    url = f"redis://:{PRIVATE_PW}@127.0.0.1:{port}/0"
    ok = run_kar("refresh", "stream", "-p", str(plain_project), "--url", url, "--wait-ms", "50",
                 "--max-batches", "1")  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "consuming kar:interactions" in ok.stdout and PRIVATE_PW not in ok.stdout

    refresher = StreamRefresher(ProjectFolder.load(plain_project), url=url, wait_ms=50)
    assert refresher.run_forever(max_batches=1) == 1
    private_redis.terminate()
    private_redis.wait(timeout=10)
    with pytest.raises(KarError) as caught:
        refresher.run_forever(max_batches=1)
    message = str(caught.value)
    assert PRIVATE_PW not in message
    assert f"Redis at redis://:***@127.0.0.1:{port}/0 failed after 0 micro-batch(es)" in message


# -- a refresh whose Feast online store (Redis, with a password) is down -----------------------


def use_online_store(root: Path, online: dict | None) -> None:
    """kar.yaml's ``features.online_store`` and ``feature_store.yaml`` both set to ``online``
    (as a publish leaves them), without filling the store."""
    from kar.features.repo import sync_project_stores
    from kar.project import ProjectFolder

    project = ProjectFolder.load(root)
    project.settings.features.online_store = online
    project.save()
    sync_project_stores(project.feature_repo, project.settings.features)


@pytest.mark.slow
def test_refresh_with_the_online_store_down_says_what_was_written(tmp_path: Path) -> None:
    """The error names the offline part files written, says a rerun finishes the run and
    shows no password; the rerun, with the store back, does finish it."""
    import torch

    from kar.pipeline import init_project, run_encode, run_generate, run_publish, run_train
    from kar.project import ProjectFolder

    torch.set_num_threads(1)
    root = tmp_path / "p"
    project = init_project(root, n_users=10)
    gen = project.settings.generation
    gen.max_new_tokens_user = gen.max_new_tokens_item = 16
    gen.truncated = "accept"
    project.save()
    project = ProjectFolder.load(root)
    run_generate(project, limit=5, progress=False)
    run_encode(project, progress=False)
    run_train(project, progress=False)
    run_publish(project)
    assert run_kar("refresh", "-p", str(root)).returncode == 0  # the first one: watermark only

    with open(root / "data" / "interactions.csv", "a") as f:
        f.write("u0001,f107,2030-01-01T00:00:00Z,5\nu0001,f114,2030-01-01T01:00:00Z,4\n")
    down = f"127.0.0.1:{closed_port()},password=PLANTED-online-pw"
    use_online_store(root, {"type": "redis", "connection_string": down})
    line = assert_one_line_error(run_kar("refresh", "-p", str(root)), secret="PLANTED-online-pw")
    assert "the online push failed" in line and "nothing was written" not in line
    parts = sorted((root / "feature_repo" / "data").rglob("part-refresh-*.parquet"))
    assert parts and all(str(p) in line for p in parts)
    assert "run `kar refresh` again to finish this run" in line

    use_online_store(root, None)  # the SQLite store kar publish filled: "back up"
    again = run_kar("refresh", "-p", str(root))
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted((root / "feature_repo" / "data").rglob("part-refresh-*.parquet")) == parts
