"""Issue 33's Ctrl-C faults: a real ``kar generate`` process is sent SIGINT once it has
saved answers. Checked: one "interrupted" line saying how many answers were saved, exit
code 130, no traceback, every finished answer in the store, the rerun asks only for the
rest, and ``timings.json`` adds every run's time. With the OpenAI backend (a real local
HTTP server) the answers already received from the batch in flight are saved too."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kar.project import ProjectFolder

pytestmark = pytest.mark.slow

KAR = str(Path(sys.executable).parent / "kar")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
LIMIT = 4  # prompts per kind
SAVED = re.compile(r"interrupted: (\d+) (\w+) answers saved in this run \((\d+) of (\d+) \2")


def _count(root: Path) -> int:
    """Stored answers, read as another process would (0 before the store exists)."""
    db = root / "artifacts" / "knowledge.db"
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM knowledge").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def _interrupt_when(
    root: Path, ready: Callable[[], bool], timeout: float = 300
) -> tuple[int, str, float]:
    """Run ``kar generate`` on ``root``, send SIGINT once ``ready()`` holds; (exit code,
    output, seconds from the SIGINT to the exit)."""
    args = [KAR, "generate", "-p", str(root), "--limit", str(LIMIT)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`kar generate` ended or stalled before the interrupt:\n"
                            f"{proc.communicate()[0].decode()[-3000:]}")  # fmt: skip
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        out, _ = proc.communicate(timeout=120)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:  # a failed wait: never leave it running
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), seconds


def _project(root: Path, **generation: object) -> Path:
    """A 10-user demo project answering in short, single calls (no retries)."""
    from kar.pipeline import init_project

    project = init_project(root, n_users=10)
    gen = project.settings.generation
    gen.max_new_tokens_user = gen.max_new_tokens_item = 12
    gen.truncated, gen.max_retries, gen.batch_size = "accept", 0, 2
    for name, value in generation.items():
        setattr(gen, name, value)
    project.save()
    return root


def _timings(root: Path) -> dict:
    return json.loads((root / "artifacts" / "timings.json").read_text())["generate"]


def _assert_one_clean_interrupt(code: int, out: str) -> re.Match[str]:
    assert code == 130, out
    assert out.count("interrupted") == 1, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    match = SAVED.search(out)
    assert match and "rerun to resume" in out[match.end() :], out
    return match


def test_ctrl_c_during_generate_saves_answers_says_so_once_and_adds_its_time(
    tmp_path: Path,
) -> None:
    import torch

    from kar.pipeline import run_generate

    torch.set_num_threads(1)
    root = _project(tmp_path / "p")
    code, out, _ = _interrupt_when(root, lambda: _count(root) >= 2)  # after the first batch
    match = _assert_one_clean_interrupt(code, out)
    saved, done = int(match[1]), int(match[3])
    stored = _count(root)
    assert saved == done == stored >= 2  # every finished batch written, and said so
    assert stored < 2 * LIMIT
    first = _timings(root)
    assert first["runs"] == 1 and first["total_s"] == first["last_s"] > 0

    reports = run_generate(ProjectFolder.load(root), limit=LIMIT, progress=False)
    assert _count(root) == 2 * LIMIT
    assert sum(r.skipped_done for r in reports.values()) == stored  # resumed
    assert sum(r.llm_calls for r in reports.values()) == 2 * LIMIT - stored
    second = _timings(root)
    assert second["runs"] == 2 and second["last_s"] > 0
    assert second["total_s"] == pytest.approx(first["total_s"] + second["last_s"], abs=0.02)


# -- OpenAI backend: answers already received are saved ------------------------------------

FAST = 2  # requests answered at once; the others are held past the client's timeout


class Held(BaseHTTPRequestHandler):
    """Answers the first FAST chat completions, holds the rest until ``release``."""

    answered = 0
    held = 0
    lock = threading.Lock()
    release = threading.Event()

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            fast = Held.answered < FAST
            if fast:
                Held.answered += 1
            else:
                Held.held += 1
        if not fast:
            Held.release.wait(60)
        answer = {
            "choices": [{"message": {"role": "assistant", "content": "They like dramas."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4},
        }  # fmt: skip
        payload = json.dumps(answer).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out
            pass


@pytest.fixture
def held_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Held)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    Held.release.set()
    httpd.shutdown()


def test_ctrl_c_keeps_the_openai_answers_already_received(held_server: str, tmp_path: Path) -> None:
    root = _project(tmp_path / "p", backend="openai", batch_size=LIMIT)
    project = ProjectFolder.load(root)
    o = project.settings.generation.openai
    o.base_url, o.model, o.api_key_env = held_server, "smollm2", None
    o.max_concurrency, o.timeout_s, o.max_retries = LIMIT, 6.0, 3
    project.save()

    def all_sent() -> bool:  # FAST answered, the rest of the batch waiting on the server
        return Held.answered == FAST and Held.held == LIMIT - FAST

    code, out, seconds = _interrupt_when(root, all_sent, timeout=120)
    match = _assert_one_clean_interrupt(code, out)
    assert (int(match[1]), match[2]) == (FAST, "user_preference")
    assert _count(root) == FAST  # the batch's received answers, not lost with the batch
    assert Held.held == LIMIT - FAST  # the timed-out requests were not retried
    assert seconds < 2 * o.timeout_s  # the held requests' timeout, no retries after it
