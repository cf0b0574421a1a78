"""The knowledge store: every LLM answer, keyed by the identity of the call (SQLAlchemy Core)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kar.data.schema import to_utc
from kar.errors import ConfigError, KarError, KnowledgeStoreError
from kar.records import GenerationOutput, PromptRecord, SamplingParams

# (entity_type, entity_id, kind, prompt_hash): with model + sampling_key, one LLM call.
CallKey = tuple[str, str, str, str]

KEY_COLUMNS = ("entity_type", "entity_id", "kind", "prompt_hash", "model", "sampling_key")
STATUSES = ("ok", "flagged")
# sampling_key of texts brought in with `kar knowledge import` (kar.generation.imports):
# for an entity and kind, an imported text is preferred to an LLM answer.
IMPORTED_SAMPLING_KEY = "imported"
ANSWER_SCHEMA: dict[str, pl.DataType] = {
    "entity_type": pl.String,
    "entity_id": pl.String,
    "kind": pl.String,
    "scenario": pl.String,
    "prompt_version": pl.String,
    "prompt_hash": pl.String,
    "model": pl.String,
    "sampling_key": pl.String,
    "answer": pl.String,
    "context_text": pl.String,
    "status": pl.String,
    "flag_reason": pl.String,
    "attempts": pl.Int64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "finish_reason": pl.String,
    "as_of": pl.Datetime("us", "UTC"),
    "created_at": pl.Datetime("us", "UTC"),
}


SUPPORTED_URLS = (
    "sqlite:///path/to/knowledge.db, a bare file path (relative to the project), "
    "or postgresql+psycopg://user@host:5432/db"
)
SQLITE_BUSY_S = 30  # a writer waits this long for another process's transaction
_CORRUPT = ("database disk image is malformed", "file is not a database")


def store_url_problem(url: str) -> str | None:
    """Why ``url`` cannot name a knowledge store, or None. A scheme still holding a ``${VAR}``
    is judged once expanded (by :class:`KnowledgeStore`)."""
    scheme, sep, _ = url.partition("://")
    if not sep or "$" in scheme:
        return None
    if scheme.split("+", 1)[0].lower() in ("sqlite", "postgresql"):
        return None
    return f"{scheme}:// is not a supported knowledge store URL; use {SUPPORTED_URLS}"


def _sqlite_message(file: str, error: BaseException, busy_s: float) -> str | None:
    """A one-line message for SQLite's corruption and lock errors on ``file``, else None."""
    text = str(error)
    if any(mark in text for mark in _CORRUPT):
        return (
            f"knowledge store {file} is damaged ({text}); kar stopped without writing to it. "
            f'Restore it from a backup, or save what is readable with `sqlite3 {file} ".recover"'
            " | sqlite3 recovered.db` and point knowledge_store at recovered.db"
        )
    if "database is locked" in text or "database is busy" in text:
        return (
            f"knowledge store {file} stayed locked by another process for over {busy_s:g} s; "
            "finished answers are saved: rerun when the other kar command has finished"
        )
    return None


def call_key(prompt: PromptRecord) -> CallKey:
    """The part of a call's identity that comes from the prompt."""
    return (prompt.entity_type, prompt.entity_id, prompt.kind, prompt.prompt_hash)


def copy_sqlite_store(source: Path, target: Path) -> Path:
    """A consistent copy of an SQLite store file, through SQLite's backup API: the source
    is opened read-only and may be in use by a running job. Replaces ``target``."""
    import sqlite3

    if not source.exists():
        raise ConfigError(f"{source}: no such SQLite knowledge store")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    except sqlite3.DatabaseError as exc:
        message = _sqlite_message(str(source), exc, SQLITE_BUSY_S)
        if message is None:
            raise
        raise KnowledgeStoreError(message) from None
    finally:
        src.close()
        dst.close()
    return target


def _define_table(metadata: sa.MetaData, name: str) -> sa.Table:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite rowid alias
    return sa.Table(
        name,
        metadata,
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("entity_type", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("scenario", sa.String(128), nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("prompt_version", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("sampling_key", sa.String(64), nullable=False),
        sa.Column("sampling_params", sa.Text, nullable=False),
        sa.Column("prompt_text", sa.Text, nullable=False),
        sa.Column("context_text", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("flag_reason", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("finish_reason", sa.String(16), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(*KEY_COLUMNS, name=f"uq_{name}_call"),
        sa.CheckConstraint("status IN ('ok', 'flagged')", name=f"ck_{name}_status"),
        sa.Index(f"ix_{name}_model_key", "model", "sampling_key", "kind"),
        sa.Index(f"ix_{name}_scenario_kind", "scenario", "kind"),
    )


def _sqlite_pragmas(busy_s: float) -> Any:
    """A connect hook: wait up to ``busy_s`` for other writers, WAL (readers never wait)."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_s * 1000)}")  # first: WAL may wait too
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return on_connect


def _engine_url(url: str | Path) -> sa.URL:
    """The SQLAlchemy URL of ``url`` (a plain path is a SQLite file); ConfigError if unusable."""
    text = str(url)
    if "://" not in text:
        text = f"sqlite:///{Path(text).expanduser()}"
    try:
        return make_url(text)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"knowledge store URL {text!r} is not a SQLAlchemy URL") from exc


class KnowledgeStore:
    """LLM answers in a SQL table (SQLite file by default, PostgreSQL at scale).

    The unique key (entity_type, entity_id, kind, prompt_hash, model, sampling_key) is the
    identity of an LLM call: writes are idempotent, so a rerun or a crash never repeats
    or loses a call. ``url`` is any SQLAlchemy URL, or a plain path to a SQLite file.
    """

    def __init__(
        self,
        url: str | Path = "sqlite:///knowledge.db",
        table: str = "knowledge",
        *,
        busy_timeout_s: float = SQLITE_BUSY_S,
    ):
        parsed = _engine_url(url)
        self.busy_timeout_s = busy_timeout_s
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        self.file = self._sqlite_file()
        if self.file is not None:
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"knowledge store folder {self.file.parent}: {exc}") from None
        try:
            self.engine = sa.create_engine(parsed)
        except sa.exc.NoSuchModuleError:
            raise ConfigError(
                f"knowledge_store: {parsed.drivername}:// cannot be loaded; use {SUPPORTED_URLS}"
            ) from None
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas(busy_timeout_s))
            sa.event.listen(self.engine, "handle_error", self._sqlite_error)
        self.metadata = sa.MetaData()
        self.table = _define_table(self.metadata, table)
        try:
            self._create_tables()
        except sa.exc.OperationalError as exc:
            from kar.redaction import redact, redact_url

            shown = redact_url(parsed.render_as_string(hide_password=False))
            raise KarError(redact(f"cannot open knowledge store {shown}: {exc.orig}")) from exc

    def _create_tables(self, attempts: int = 3) -> None:
        """Create the table and its indexes if missing. Two processes opening a new store at
        once may both see no table; the one that loses the race ("already exists") looks
        again, and then finds it."""
        for attempt in range(attempts):
            try:
                self.metadata.create_all(self.engine)
                return
            except sa.exc.OperationalError as exc:
                if "already exists" not in str(exc.orig) or attempt == attempts - 1:
                    raise

    def __repr__(self) -> str:
        return f"KnowledgeStore({self.url.render_as_string(hide_password=True)!r})"

    def _sqlite_file(self) -> Path | None:
        """The SQLite file of this store (None: another database, or in memory)."""
        if self.dialect != "sqlite" or self.url.database in (None, "", ":memory:"):
            return None
        return Path(self.url.database).expanduser()

    def _sqlite_error(self, context: sa.engine.ExceptionContext) -> None:
        """SQLAlchemy's handle_error hook: a damaged or locked SQLite file is a one-line
        :class:`KnowledgeStoreError` for every statement on this engine, not a traceback."""
        error = context.original_exception
        message = _sqlite_message(str(self.file or ":memory:"), error, self.busy_timeout_s)
        if message is not None:
            raise KnowledgeStoreError(message) from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------
    @staticmethod
    def make_row(
        prompt: PromptRecord,
        output: GenerationOutput,
        *,
        model: str,
        sampling_key: str,
        params: SamplingParams,
        status: str = "ok",
        flag_reason: str | None = None,
        attempts: int = 1,
    ) -> dict[str, Any]:
        """One store row: the answer plus its lineage. ``params``: what the answer used."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        return {
            "entity_type": prompt.entity_type,
            "entity_id": str(prompt.entity_id),
            "kind": prompt.kind,
            "scenario": prompt.scenario,
            "prompt_hash": prompt.prompt_hash,
            "prompt_version": prompt.prompt_version,
            "model": model,
            "sampling_key": sampling_key,
            "sampling_params": json.dumps(asdict(params), sort_keys=True),
            "prompt_text": json.dumps([dict(m) for m in prompt.messages], ensure_ascii=False),
            "context_text": prompt.context_text,
            "answer": output.text,
            "status": status,
            "flag_reason": flag_reason,
            "attempts": attempts,
            "prompt_tokens": output.prompt_tokens,
            "completion_tokens": output.completion_tokens,
            "finish_reason": output.finish_reason,
            "as_of": to_utc(prompt.as_of),
        }

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows in one transaction; rows whose call key is already stored are ignored."""
        if not rows:
            return
        now = datetime.now(UTC)
        rows = [{**row, "created_at": row.get("created_at") or now} for row in rows]
        if self.dialect in ("sqlite", "postgresql"):
            if self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(self.table).on_conflict_do_nothing(index_elements=list(KEY_COLUMNS))
            with self.engine.begin() as conn:
                conn.execute(stmt, rows)
            return
        with self.engine.begin() as conn:  # other databases: skip existing keys row by row
            for row in rows:
                try:
                    with conn.begin_nested():
                        conn.execute(self.table.insert(), row)
                except sa.exc.IntegrityError:
                    continue

    # -- reading ---------------------------------------------------------------------------
    def done_keys(
        self, prompts: Iterable[PromptRecord], model: str, sampling_key: str
    ) -> set[CallKey]:
        """Call keys of ``prompts`` already answered (ok or flagged) by ``model``/``sampling_key``.

        One query over the (model, sampling_key, kind) index, intersected in Python.
        """
        wanted = {call_key(p) for p in prompts}
        if not wanted:
            return set()
        t = self.table
        kinds = sorted({key[2] for key in wanted})
        stmt = sa.select(t.c.entity_type, t.c.entity_id, t.c.kind, t.c.prompt_hash).where(
            t.c.model == model, t.c.sampling_key == sampling_key, t.c.kind.in_(kinds)
        )
        with self.engine.connect() as conn:
            stored = {tuple(row) for row in conn.execute(stmt)}
        return wanted & stored

    def count(self, status: str | None = None) -> int:
        """Number of stored answers (optionally of one status)."""
        stmt = sa.select(sa.func.count()).select_from(self.table)
        if status is not None:
            stmt = stmt.where(self.table.c.status == status)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def answers(
        self,
        scenario: str | None = None,
        kind: str | None = None,
        model: str | None = None,
        status: str | None = "ok",
    ) -> pl.DataFrame:
        """Latest answer per (entity_type, entity_id, kind), by as_of then created_at;
        an imported text (``sampling_key`` :data:`IMPORTED_SAMPLING_KEY`) before any LLM answer.

        Filters apply first: with the default ``status="ok"`` a flagged answer is never
        returned (the entity keeps its latest good answer, if any). ``status=None``: all.
        """
        t = self.table
        conditions = []
        for column, value in (("scenario", scenario), ("kind", kind), ("model", model)):
            if value is not None:
                conditions.append(t.c[column] == value)
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES} or None, got {status!r}")
            conditions.append(t.c.status == status)
        rank = (
            sa.func.row_number()
            .over(
                partition_by=(t.c.entity_type, t.c.entity_id, t.c.kind),
                order_by=(
                    sa.case((t.c.sampling_key == IMPORTED_SAMPLING_KEY, 0), else_=1),
                    t.c.as_of.desc().nulls_last(),
                    t.c.created_at.desc(),
                    t.c.id.desc(),
                ),
            )
            .label("rank")
        )
        columns = [t.c[name] for name in ANSWER_SCHEMA]
        inner = sa.select(*columns, rank).where(*conditions).subquery()
        stmt = (
            sa.select(*[inner.c[name] for name in ANSWER_SCHEMA])
            .where(inner.c.rank == 1)
            .order_by(inner.c.entity_type, inner.c.kind, inner.c.entity_id)
        )
        with self.engine.connect() as conn:
            rows = [
                {**row._mapping, "as_of": to_utc(row.as_of), "created_at": to_utc(row.created_at)}
                for row in conn.execute(stmt)
            ]
        return pl.DataFrame(rows, schema=ANSWER_SCHEMA)

    def imported_keys(self, scenario: str | None = None) -> set[tuple[str, str, str, str]]:
        """(scenario, entity_type, entity_id, kind) of every imported text (see ``answers``)."""
        t = self.table
        stmt = sa.select(t.c.scenario, t.c.entity_type, t.c.entity_id, t.c.kind).where(
            t.c.sampling_key == IMPORTED_SAMPLING_KEY, t.c.status == "ok"
        )
        if scenario is not None:
            stmt = stmt.where(t.c.scenario == scenario)
        with self.engine.connect() as conn:
            return {tuple(row) for row in conn.execute(stmt)}  # type: ignore[misc]

    def forget_flagged(self, model: str | None = None) -> int:
        """Delete flagged answers so that the next run asks those prompts again."""
        stmt = sa.delete(self.table).where(self.table.c.status == "flagged")
        if model is not None:
            stmt = stmt.where(self.table.c.model == model)
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)
