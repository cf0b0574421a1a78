"""Knowledge store and runner logic with a fake backend (real LLM: test_generation_llm.py)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import polars as pl
import pytest
import sqlalchemy as sa

from kar.errors import ConfigError, GenerationError, KarError
from kar.generation import (
    GenerationBackend,
    KnowledgeStore,
    call_key,
    generate_knowledge,
)
from kar.records import KIND_ITEM, KIND_USER, GenerationOutput, PromptRecord, SamplingParams

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class FakeEchoBackend:  # fake: stands in for an LLM only in store-logic tests
    """Answers "answer to <last message>"; scripted failures by entity id or call number."""

    def __init__(self, model_name: str = "fake-echo", bad: dict[str, str] | None = None):
        self.model_name = model_name
        self.bad = bad or {}  # entity_id -> text returned on the first attempt
        self.sent: list[str] = []  # entity ids of every prompt sent, retries included
        self.calls: list[SamplingParams] = []
        self.raise_on_call: int | None = None
        self.exception: BaseException = RuntimeError("backend exploded")

    def generate(
        self, batch: list[Sequence[dict[str, str]]], params: SamplingParams
    ) -> list[GenerationOutput]:
        self.calls.append(params)
        if self.raise_on_call == len(self.calls):
            raise self.exception
        outputs = []
        for messages in batch:
            entity_id = messages[-1]["content"].split()[-1]
            self.sent.append(entity_id)
            first_try = params.seed == 0 and params.max_new_tokens == 64
            text = self.bad.get(entity_id) if first_try else None
            if text is None:
                text = f"answer to {messages[-1]['content']}"
            outputs.append(GenerationOutput(text, 7, 3, "stop"))
        return outputs


def prompt(entity_id: str, kind: str = KIND_ITEM, as_of: datetime | None = None) -> PromptRecord:
    entity_type = "user" if kind == KIND_USER else "item"
    return PromptRecord(
        entity_type=entity_type,
        entity_id=entity_id,
        kind=kind,
        scenario="movies",
        prompt_version="v1",
        messages=({"role": "user", "content": f"tell me about {entity_id}"},),
        as_of=as_of,
        context_text=f"context of {entity_id}",
    )


PARAMS = SamplingParams(max_new_tokens=64)


@pytest.fixture()
def store(tmp_path) -> KnowledgeStore:
    with KnowledgeStore(f"sqlite:///{tmp_path / 'artifacts' / 'knowledge.db'}") as s:
        yield s


def test_fake_backend_satisfies_protocol() -> None:
    assert isinstance(FakeEchoBackend(), GenerationBackend)


def test_sqlite_store_uses_wal_and_plain_paths(tmp_path) -> None:
    store = KnowledgeStore(tmp_path / "k.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert store.count() == 0


def test_run_stores_lineage_and_answers(store: KnowledgeStore) -> None:
    as_of = datetime(2000, 1, 1, tzinfo=UTC)
    prompts = [prompt(f"i{n}") for n in range(5)] + [prompt("u1", KIND_USER, as_of)]
    backend = FakeEchoBackend()
    report = generate_knowledge(prompts, backend, store, PARAMS, batch_size=4, progress=False)
    assert (report.total, report.llm_calls, report.answered_ok, report.flagged) == (6, 6, 6, 0)
    assert report.completion_tokens == 18 and report.prompt_tokens == 42
    with store.engine.connect() as conn:
        rows = [r._mapping for r in conn.execute(sa.select(store.table))]
    assert len(rows) == 6
    user = next(r for r in rows if r["entity_id"] == "u1")
    assert user["prompt_hash"] == prompts[-1].prompt_hash
    assert user["model"] == "fake-echo" and user["sampling_key"] == PARAMS.key()
    assert json.loads(user["sampling_params"])["max_new_tokens"] == 64
    assert json.loads(user["prompt_text"]) == [dict(m) for m in prompts[-1].messages]
    assert user["context_text"] == "context of u1" and user["attempts"] == 1
    assert user["finish_reason"] == "stop" and user["status"] == "ok"
    df = store.answers(kind=KIND_USER)
    assert df.height == 1 and df["answer"][0] == "answer to tell me about u1"
    assert df["as_of"][0] == as_of and df.schema["created_at"] == pl.Datetime("us", "UTC")
    assert store.answers(scenario="movies").height == 6
    assert store.answers(scenario="other").height == 0


def test_rerun_makes_zero_llm_calls(store: KnowledgeStore, caplog) -> None:
    prompts = [prompt(f"i{n}") for n in range(5)]
    generate_knowledge(prompts, FakeEchoBackend(), store, PARAMS, progress=False)
    again = FakeEchoBackend()
    with caplog.at_level(logging.INFO, logger="kar.generation.runner"):
        report = generate_knowledge(prompts, again, store, PARAMS, progress=False)
    assert again.calls == [] and report.llm_calls == 0 and report.skipped_done == 5
    assert "all 5 prompts already answered; 0 LLM calls" in caplog.text
    # a new model or new sampling params are different calls
    other = FakeEchoBackend(model_name="fake-other")
    assert generate_knowledge(prompts[:2], other, store, PARAMS, progress=False).llm_calls == 2
    assert store.count() == 7


def test_only_missing_prompts_are_sent(store: KnowledgeStore) -> None:
    prompts = [prompt(f"i{n}") for n in range(6)]
    generate_knowledge(prompts[:4], FakeEchoBackend(), store, PARAMS, progress=False)
    backend = FakeEchoBackend()
    report = generate_knowledge(prompts + prompts[:1], backend, store, PARAMS, progress=False)
    assert sorted(backend.sent) == ["i4", "i5"]
    assert (report.total, report.skipped_done, report.llm_calls) == (6, 4, 2)


def test_done_keys_one_query_for_many_prompts(store: KnowledgeStore) -> None:
    prompts = [prompt(f"i{n}") for n in range(3000)]
    generate_knowledge(prompts[:2000], FakeEchoBackend(), store, PARAMS, 500, progress=False)
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    done = store.done_keys(prompts, "fake-echo", PARAMS.key())
    assert done == {call_key(p) for p in prompts[:2000]}
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert store.done_keys(prompts, "fake-echo", SamplingParams(seed=1).key()) == set()


def test_write_is_idempotent(store: KnowledgeStore) -> None:
    p = prompt("i1")
    row = KnowledgeStore.make_row(
        p, GenerationOutput("x", 1, 1, "stop"), model="m", sampling_key="k", params=PARAMS
    )
    store.write([row])
    store.write([row, {**row, "answer": "different"}])
    assert store.count() == 1
    assert store.answers()["answer"].to_list() == ["x"]


def test_bad_answer_retried_then_ok(store: KnowledgeStore) -> None:
    backend = FakeEchoBackend(bad={"i1": ""})  # empty on the first try only
    report = generate_knowledge(
        [prompt("i0"), prompt("i1")], backend, store, PARAMS, progress=False
    )
    assert backend.sent == ["i0", "i1", "i1"] and report.llm_calls == 3
    assert report.answered_ok == 2 and report.flagged == 0
    row = store.answers().filter(entity_id="i1").row(0, named=True)
    assert row["attempts"] == 2 and row["status"] == "ok"
    with store.engine.connect() as conn:
        used = conn.execute(
            sa.select(store.table.c.sampling_params).where(store.table.c.entity_id == "i1")
        ).scalar_one()
    assert json.loads(used)["temperature"] > 0  # the retry sampled instead of greedy
    # the stored key is still the requested params': a rerun skips it
    assert generate_knowledge([prompt("i1")], backend, store, PARAMS, progress=False).llm_calls == 0


def test_still_bad_answer_is_flagged_and_hidden(store: KnowledgeStore) -> None:
    backend = FakeEchoBackend(bad={"i1": "I cannot answer that."})
    # the fake answers well on retries, so allow no retry: the refusal is final
    report = generate_knowledge(
        [prompt("i0"), prompt("i1")], backend, store, PARAMS, max_retries=0, progress=False
    )
    assert (report.answered_ok, report.flagged, report.llm_calls) == (1, 1, 2)
    assert store.answers()["entity_id"].to_list() == ["i0"]
    flagged = store.answers(status="flagged")
    assert flagged["entity_id"].to_list() == ["i1"]
    assert flagged["flag_reason"].to_list() == ["refusal"]
    # flagged calls count as done; forget_flagged makes the next run ask again
    assert generate_knowledge([prompt("i1")], backend, store, PARAMS, progress=False).llm_calls == 0
    assert store.forget_flagged() == 1
    report = generate_knowledge([prompt("i1")], backend, store, PARAMS, progress=False)
    assert report.llm_calls == 2 and report.answered_ok == 1  # refusal, then a good retry


def test_backend_error_writes_nothing_for_that_batch(store: KnowledgeStore) -> None:
    prompts = [prompt(f"i{n}") for n in range(6)]
    backend = FakeEchoBackend()
    backend.raise_on_call = 2
    with pytest.raises(GenerationError, match="fake-echo.*batch of 2.*backend exploded"):
        generate_knowledge(prompts, backend, store, PARAMS, batch_size=2, progress=False)
    assert store.count() == 2  # the first batch only
    resumed = FakeEchoBackend()
    report = generate_knowledge(prompts, resumed, store, PARAMS, batch_size=2, progress=False)
    assert report.llm_calls == 4 and store.count() == 6
    assert resumed.sent == ["i2", "i3", "i4", "i5"]  # never the saved batch again


def test_keyboard_interrupt_keeps_saved_batches(store: KnowledgeStore, caplog) -> None:
    prompts = [prompt(f"i{n}") for n in range(6)]
    backend = FakeEchoBackend()
    backend.raise_on_call, backend.exception = 3, KeyboardInterrupt()
    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt) as stopped:
        generate_knowledge(prompts, backend, store, PARAMS, batch_size=2, progress=False)
    assert store.count() == 4
    # one message (the CLI's guard prints it once): carried by the exception, logged at info
    message = str(stopped.value)
    pattern = r"4 (\w+ )?answers saved in this run \(4 of 6 (\w+ )?prompts done\)"
    assert re.fullmatch(pattern, message)
    assert f"interrupted: {message}; rerun to resume" in caplog.text


def test_answers_latest_by_as_of_then_created_at(store: KnowledgeStore) -> None:
    old, new = datetime(2000, 1, 1, tzinfo=UTC), datetime(2001, 1, 1, tzinfo=UTC)
    prompts = [
        PromptRecord(
            "user",
            "u1",
            KIND_USER,
            "movies",
            "v1",
            ({"role": "user", "content": f"history until {ts.year} u1"},),
            ts,
        )
        for ts in (new, old)
    ]
    generate_knowledge(prompts, FakeEchoBackend(), store, PARAMS, progress=False)
    df = store.answers()
    assert df.height == 1 and df["as_of"][0] == new and "2001" in df["answer"][0]
    # same as_of, asked again with a new template version: the later one wins
    newer = PromptRecord(
        "user",
        "u1",
        KIND_USER,
        "movies",
        "v2",
        ({"role": "user", "content": "v2 until 2001 u1"},),
        new,
    )
    generate_knowledge([newer], FakeEchoBackend(), store, PARAMS, progress=False)
    assert store.answers()["prompt_version"].to_list() == ["v2"]
    assert store.answers(status=None).height == 1 and store.count() == 3


def test_bad_urls_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        KnowledgeStore("sqlite:/x://")
    with pytest.raises(KarError, match="cannot open knowledge store"):
        KnowledgeStore("postgresql+psycopg://nobody@127.0.0.1:1/none")


@pytest.fixture()
def pg_store():
    table = f"knowledge_test_{uuid.uuid4().hex[:8]}"
    try:
        store = KnowledgeStore(PG_URL, table=table)
    except KarError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    yield store
    store.table.drop(store.engine)
    store.close()


@pytest.mark.services
def test_postgresql_store(pg_store: KnowledgeStore) -> None:
    prompts = [prompt(f"i{n}") for n in range(5)] + [
        prompt("u1", KIND_USER, datetime(2000, 1, 1, tzinfo=UTC))
    ]
    report = generate_knowledge(prompts, FakeEchoBackend(), pg_store, PARAMS, 2, progress=False)
    assert report.llm_calls == 6 and pg_store.count() == 6
    again = FakeEchoBackend()
    assert generate_knowledge(prompts, again, pg_store, PARAMS, progress=False).llm_calls == 0
    assert again.calls == []
    rows = pg_store.answers()
    pg_store.write(
        [
            KnowledgeStore.make_row(  # conflict ignored, not an error
                prompts[0],
                GenerationOutput("dup", 1, 1, "stop"),
                model="fake-echo",
                sampling_key=PARAMS.key(),
                params=PARAMS,
            )
        ]
    )
    assert pg_store.count() == 6 and rows.height == 6
    assert rows.filter(entity_id="u1")["as_of"][0] == datetime(2000, 1, 1, tzinfo=UTC)


class FakeTruncatingBackend:  # fake: stands in for an LLM only in truncation-policy tests
    """Every answer hits the token limit; `texts` scripts the text per entity id."""

    model_name = "fake-truncating"

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts
        self.sent: list[str] = []

    def generate(self, batch, params: SamplingParams) -> list[GenerationOutput]:
        outputs = []
        for messages in batch:
            entity_id = messages[-1]["content"].split()[-1]
            self.sent.append(entity_id)
            outputs.append(
                GenerationOutput(self.texts[entity_id], 7, params.max_new_tokens, "length")
            )
        return outputs


CUT = "A heist film about loyalty. It is tense and fast. The ending turns on a betrayal that"


def test_truncated_answer_is_trimmed_to_last_sentence(store: KnowledgeStore) -> None:
    backend = FakeTruncatingBackend({"i0": CUT, "i1": "one long sentence that never ends and"})
    report = generate_knowledge(
        [prompt("i0"), prompt("i1")], backend, store, PARAMS, progress=False
    )
    # i0 is trimmed (no retry); i1 has no complete sentence: retried, then flagged
    assert backend.sent == ["i0", "i1", "i1"]
    assert (report.answered_ok, report.flagged) == (1, 1)
    row = store.answers().row(0, named=True)
    assert row["entity_id"] == "i0"
    assert row["answer"] == "A heist film about loyalty. It is tense and fast."
    assert row["finish_reason"] == "trimmed"
    assert store.answers(status="flagged")["flag_reason"].to_list() == ["truncated"]


def test_truncation_policy_retry_and_accept(tmp_path) -> None:
    with KnowledgeStore(f"sqlite:///{tmp_path / 'retry.db'}") as retry_store:
        backend = FakeTruncatingBackend({"i0": CUT})
        report = generate_knowledge(
            [prompt("i0")], backend, retry_store, PARAMS, truncated="retry", progress=False
        )
        assert backend.sent == ["i0", "i0"] and report.flagged == 1
    with KnowledgeStore(f"sqlite:///{tmp_path / 'accept.db'}") as accept_store:
        backend = FakeTruncatingBackend({"i0": CUT})
        generate_knowledge(
            [prompt("i0")], backend, accept_store, PARAMS, truncated="accept", progress=False
        )
        row = accept_store.answers().row(0, named=True)
        assert row["answer"] == CUT and row["finish_reason"] == "length"


def test_copy_sqlite_store_while_open(tmp_path) -> None:
    """A copy taken while the store is open (WAL mode, uncheckpointed writes) holds every
    answer; the source is untouched; a missing source is a clear error naming the file."""
    from kar.generation.store import copy_sqlite_store

    source = tmp_path / "knowledge.db"
    store = KnowledgeStore(f"sqlite:///{source}")
    generate_knowledge([prompt("i1"), prompt("i2")], FakeEchoBackend(), store, SamplingParams(),
                       progress=False)  # fmt: skip
    copy = copy_sqlite_store(source, tmp_path / "copies" / "pool.db")
    copied = KnowledgeStore(f"sqlite:///{copy}")
    assert copied.answers()["entity_id"].to_list() == ["i1", "i2"]
    copied.close()
    assert store.answers().height == 2
    store.close()
    with pytest.raises(ConfigError, match="missing.db"):
        copy_sqlite_store(tmp_path / "missing.db", tmp_path / "x.db")
