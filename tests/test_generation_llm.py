"""The generation stage with the real bundled SmolLM2-135M-Instruct (converted once, cached)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kar.errors import KarError
from kar.generation import (
    KnowledgeStore,
    TransformersBackend,
    bundled_model_dir,
    generate_knowledge,
    resolve_model,
)
from kar.records import KIND_ITEM, PromptRecord, SamplingParams

pytestmark = pytest.mark.slow

SHORT = SamplingParams(max_new_tokens=16)
TITLES = [
    "Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "Casino (1995)", "Babe (1995)",
    "Sabrina (1995)", "GoldenEye (1995)", "Balto (1995)", "Nixon (1995)", "Othello (1995)",
    "Clueless (1995)", "Se7en (1995)",
]  # fmt: skip


def item_prompt(n: int) -> PromptRecord:
    return PromptRecord(
        entity_type="item",
        entity_id=str(n),
        kind=KIND_ITEM,
        scenario="movies",
        prompt_version="test-v1",
        messages=(
            {"role": "system", "content": "You are a movie expert. Answer briefly."},
            {"role": "user", "content": f"What genre is the movie {TITLES[n]}?"},
        ),
        context_text=TITLES[n],
    )


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return bundled_model_dir()  # converts the GGUF on the first run only


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> TransformersBackend:
    # this machine's format (generation.dtype auto): bfloat16 is emulated, ~100x slower,
    # on a CPU without its instructions
    return TransformersBackend(model_dir, dtype="auto", threads=1, model_name="smollm2@auto")


class CountingBackend:
    """Wraps the real backend and records which prompts reach it."""

    def __init__(self, inner: TransformersBackend) -> None:
        self.inner, self.model_name, self.sent = inner, inner.model_name, []

    def generate(self, batch, params):
        self.sent.extend(m[-1]["content"] for m in batch)
        return self.inner.generate(batch, params)


def test_resolve_model(model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model(None) == model_dir == resolve_model("smollm2")
    assert (model_dir / "config.json").is_file() and (model_dir / "chat_template.jinja").exists()
    assert not list(model_dir.parent.glob(f".{model_dir.name}.*"))  # no leftover tmp folders
    assert resolve_model(model_dir) == model_dir
    with pytest.raises(KarError, match="does not download"):
        resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(KarError, match="not a Hugging Face model folder"):
        resolve_model(tmp_path)


def test_default_model_name_is_stable() -> None:
    assert TransformersBackend(dtype="float32").model_name == "smollm2-135m-instruct@float32"


def test_chat_generation_counts_tokens(backend: TransformersBackend) -> None:
    batch = [list(item_prompt(0).messages), [{"role": "user", "content": "Say hello."}]]
    outs = backend.generate(batch, SHORT)
    assert len(outs) == 2
    for messages, out in zip(batch, outs, strict=True):
        assert out.text.strip()
        rendered = backend.render(messages)
        assert rendered.endswith("<|im_start|>assistant\n")  # generation prompt added
        n_prompt = len(backend.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert out.prompt_tokens == n_prompt  # padding is not counted
        assert 0 < out.completion_tokens <= SHORT.max_new_tokens
        assert (out.finish_reason == "length") == (out.completion_tokens == SHORT.max_new_tokens)


def test_greedy_is_deterministic_and_sampling_is_seeded(backend: TransformersBackend) -> None:
    batch = [list(item_prompt(n).messages) for n in (1, 2)]
    assert [o.text for o in backend.generate(batch, SHORT)] == [
        o.text for o in backend.generate(batch, SHORT)
    ]
    sampled = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=5)
    first = [o.text for o in backend.generate(batch, sampled)]
    assert first == [o.text for o in backend.generate(batch, sampled)]


def test_run_lineage_and_rerun(backend: TransformersBackend, tmp_path: Path) -> None:
    store = KnowledgeStore(tmp_path / "knowledge.db")
    prompts = [item_prompt(n) for n in range(3)]
    report = generate_knowledge(prompts, backend, store, SHORT, batch_size=2, progress=False)
    assert report.total == 3 and report.answered_ok + report.flagged == 3
    assert report.llm_calls >= 3 and report.completion_tokens > 0 and report.tokens_per_s > 0
    df = store.answers(status=None)
    assert df.height == 3 and set(df["entity_id"]) == {"0", "1", "2"}
    for row in df.iter_rows(named=True):
        assert row["model"] == "smollm2@auto" and row["sampling_key"] == SHORT.key()
        assert row["prompt_version"] == "test-v1" and row["scenario"] == "movies"
        assert row["answer"] and row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["created_at"] is not None and row["attempts"] in (1, 2)
        assert row["status"] == ("ok" if row["flag_reason"] is None else "flagged")
    counting = CountingBackend(backend)
    again = generate_knowledge(prompts, counting, store, SHORT, progress=False)
    assert counting.sent == [] and again.llm_calls == 0 and again.skipped_done == 3


RUN_SCRIPT = """
import sys
from kar.generation import KnowledgeStore, TransformersBackend, generate_knowledge
sys.path.insert(0, {tests!r})
from test_generation_llm import SHORT, item_prompt
backend = TransformersBackend({model!r}, model_name="smollm2@auto")
print("loaded", flush=True)
generate_knowledge([item_prompt(n) for n in range(12)], backend, KnowledgeStore({db!r}),
                   SHORT, batch_size=2, max_retries=0, progress=False)
"""


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT count(*) FROM knowledge").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0


def test_resume_after_kill(backend: TransformersBackend, model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "knowledge.db"
    script = tmp_path / "run.py"
    tests = str(Path(__file__).parent)
    script.write_text(
        textwrap.dedent(RUN_SCRIPT).format(tests=tests, model=str(model_dir), db=str(db))
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _rows(db) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    before = _rows(db)
    assert 4 <= before < 12, err.decode()[-2000:]
    assert before % 2 == 0  # whole batches only

    with sqlite3.connect(db) as conn:
        saved = {int(r[0]) for r in conn.execute("SELECT entity_id FROM knowledge")}
    missing = [item_prompt(n).messages[-1]["content"] for n in range(12) if n not in saved]
    counting = CountingBackend(backend)
    store = KnowledgeStore(db)
    report = generate_knowledge(
        [item_prompt(n) for n in range(12)],
        counting,
        store,
        SHORT,
        2,
        max_retries=0,
        progress=False,
    )
    assert report.skipped_done == before and report.llm_calls == 12 - before
    assert sorted(counting.sent) == sorted(missing)  # the LLM saw only the missing prompts
    with sqlite3.connect(db) as conn:
        per_entity = dict(conn.execute("SELECT entity_id, count(*) FROM knowledge GROUP BY 1"))
    assert per_entity == {str(n): 1 for n in range(12)}  # every prompt exactly once
