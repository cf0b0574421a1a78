"""Imported knowledge: your own texts about users and items, stored like LLM answers.

``kar knowledge import FILE`` reads a CSV (UTF-8) or Parquet file with columns
``entity_id``, ``kind`` (``user`` or ``item``) and ``text`` and writes each usable row to the
knowledge store as the entity's knowledge of that kind, with lineage: ``model`` is
``import:<source>``, ``prompt_hash`` the text's content hash, ``sampling_key``
:data:`~kar.generation.store.IMPORTED_SAMPLING_KEY`, ``prompt_text`` the file and row it came
from. ``KnowledgeStore.answers`` prefers an imported text to an LLM answer for the same
entity and kind, so it flows through encode, train, publish and refresh unchanged, and
``kar generate`` does not ask the LLM about it.

Bad rows (missing or unknown entity id, unknown kind, empty text, text not UTF-8, an entity
listed twice) are rejected with a reason, their row number and their ``entity_id`` and
``kind`` as the file has them, appended to ``<rejects_dir>/knowledge_import_<source>_rejects.csv``
(``imported_at`` tells the imports apart; earlier rejects are kept); a file that cannot be read (not
UTF-8, a required column missing) is an error naming file, row and field, raised before
anything is written. Re-importing the same text (with the same context) changes nothing; a
changed one replaces the entity's earlier text from the same source, in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import sqlalchemy as sa

from kar.data.schema import to_utc
from kar.data.tables import read_table
from kar.data.validate import ROW, RejectLog, require_columns
from kar.errors import ConfigError, DataValidationError
from kar.generation.store import IMPORTED_SAMPLING_KEY, KnowledgeStore
from kar.prompts.builders import build_item_prompts, build_user_prompts
from kar.records import KIND_ITEM, KIND_USER

if TYPE_CHECKING:
    from kar.data.schema import Dataset
    from kar.prompts.scenario import Scenario

log = logging.getLogger(__name__)

COLUMNS = ("entity_id", "kind", "text")
# accepted spellings of the kind column -> (entity_type, knowledge kind)
KINDS: dict[str, tuple[str, str]] = {
    "user": ("user", KIND_USER),
    KIND_USER: ("user", KIND_USER),
    "item": ("item", KIND_ITEM),
    KIND_ITEM: ("item", KIND_ITEM),
}
IMPORT_VERSION = "import-v1"  # stored as prompt_version: the import format, not a template
FINISH_REASON = "imported"
_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_DELETE_CHUNK = 500
# the entity_id and kind of a row as the file has them, kept for its rejects file
RAW_ID, RAW_KIND = "__entity_id_raw", "__kind_raw"


@dataclass
class ImportReport:
    """What one import did: rows read, new texts, replaced texts, unchanged, rejected."""

    source: str
    file: str
    rows_read: int = 0
    imported: int = 0  # entities that had no text from this source
    replaced: int = 0  # entities whose text from this source changed
    unchanged: int = 0  # same text already stored (re-import)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows
    rejects_file: str | None = None
    rejects_kept: int = 0  # rows of earlier imports already in the rejects file, kept
    by_kind: dict[str, int] = field(default_factory=dict)  # accepted rows per entity type

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        kinds = ", ".join(
            f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(self.by_kind.items())
        )
        text = (
            f"source {self.source!r}: {self.rows_read} rows read, {self.imported} new, "
            f"{self.replaced} replaced, {self.unchanged} unchanged ({kinds or 'none'}); "
            f"{self.n_rejected} rejected"
        )
        if self.rejected:
            text += " (" + "; ".join(f"{r}: {n}" for r, n in self.rejected.items()) + ")"
        if self.rejects_file:
            text += f" -> {self.rejects_file}"
            if self.rejects_kept:
                text += f" (appended; {self.rejects_kept} earlier rejected rows kept)"
        return text


def content_hash(text: str) -> str:
    """32-hex sha256 of a text: its identity in the store (``prompt_hash``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def check_source(source: str) -> str:
    """The source name, or ConfigError: letters, digits, ``._-``, at most 100 characters."""
    if not _SOURCE.match(source):
        raise ConfigError(
            f"source name {source!r}: use letters, digits, '.', '_' or '-' (at most 100), "
            "starting with a letter or digit"
        )
    return source


def default_source(path: str | Path) -> str:
    """A source name from a file name: ``my texts.csv`` -> ``my_texts``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._-")
    return (stem or "texts")[:100]


def read_texts(path: str | Path) -> pl.DataFrame:
    """The file's rows as strings (entity_id, kind, text, :data:`ROW`, and the raw
    :data:`RAW_ID` / :data:`RAW_KIND`), not yet validated.

    CSV must be UTF-8 (a bad byte is an error naming the row and column); a Parquet binary
    ``text`` column is decoded row by row (undecodable rows become null, marked in
    ``__utf8_bad``).
    """
    frame = read_table(path)
    file = str(path)
    require_columns(frame, COLUMNS, file)
    if frame.height == 0:
        raise DataValidationError("no data rows", file=file)
    bad_utf8 = pl.lit(False)
    if frame.schema["text"] == pl.Binary:
        raw = frame["text"].to_list()
        decoded, flags = [], []
        for value in raw:
            try:
                decoded.append(None if value is None else value.decode("utf-8"))
                flags.append(False)
            except UnicodeDecodeError:
                decoded.append(None)
                flags.append(True)
        frame = frame.with_columns(pl.Series("text", decoded, dtype=pl.Utf8))
        bad_utf8 = pl.Series("__utf8_bad", flags, dtype=pl.Boolean)
    return frame.select(
        pl.col("entity_id").cast(pl.Utf8).alias(RAW_ID),
        pl.col("kind").cast(pl.Utf8).alias(RAW_KIND),
        pl.col("entity_id").cast(pl.Utf8).str.strip_chars(),
        pl.col("kind").cast(pl.Utf8).str.strip_chars().str.to_lowercase(),
        # NUL bytes: PostgreSQL text cannot hold them, and they carry nothing
        pl.col("text").cast(pl.Utf8).str.replace_all("\x00", "", literal=True).str.strip_chars(),
        bad_utf8.alias("__utf8_bad"),
        ROW,
    )


def validate_texts(
    frame: pl.DataFrame, dataset: Dataset, file: str, rejects: RejectLog
) -> pl.DataFrame:
    """Accepted rows (entity_type, entity_id, kind, text, ROW); the others go to ``rejects``."""
    entity_type = pl.col("kind").replace_strict(
        {k: v[0] for k, v in KINDS.items()}, default=None, return_dtype=pl.Utf8
    )
    frame = frame.with_columns(
        entity_type.alias("entity_type"),
        pl.col("kind").replace_strict(
            {k: v[1] for k, v in KINDS.items()}, default=None, return_dtype=pl.Utf8
        ),
        pl.when(pl.col("entity_id") == "")
        .then(None)
        .otherwise(pl.col("entity_id"))
        .alias("entity_id"),
    )
    # the reject file's user_id / item_id columns say which entity a row was about
    frame = frame.with_columns(
        pl.when(pl.col("entity_type") == "user").then(pl.col("entity_id")).alias("user_id"),
        pl.when(pl.col("entity_type") == "item").then(pl.col("entity_id")).alias("item_id"),
    )
    users = dataset.users["user_id"].cast(pl.Utf8).implode()
    items = dataset.items["item_id"].cast(pl.Utf8).implode()
    checks = (
        (pl.col("entity_id").is_null(), "missing entity_id"),
        (pl.col("entity_type").is_null(), "unknown kind (expected user or item)"),
        (pl.col("__utf8_bad"), "text not valid UTF-8"),
        (pl.col("text").is_null() | (pl.col("text") == ""), "empty text"),
        (
            (pl.col("entity_type") == "user") & ~pl.col("entity_id").is_in(users),
            "user_id not in the project's users",
        ),
        (
            (pl.col("entity_type") == "item") & ~pl.col("entity_id").is_in(items),
            "item_id not in the project's items",
        ),
        (
            pl.int_range(pl.len()).over("entity_type", "entity_id") > 0,
            "duplicate entity (same kind and entity_id on an earlier row)",
        ),
    )
    for bad, reason in checks:
        frame = rejects.split(frame, bad, table="knowledge_import", file=file, reason=reason)
    return frame.select("entity_type", "entity_id", "kind", "text", ROW)


def import_texts(
    path: str | Path,
    store: KnowledgeStore,
    dataset: Dataset,
    scenario: Scenario,
    *,
    source: str | None = None,
    rejects_dir: str | Path | None = None,
    as_of: pl.DataFrame | None = None,
    context: bool = True,
) -> ImportReport:
    """Import the texts of ``path`` into ``store`` for ``scenario``'s project (see module doc).

    ``dataset`` says which user and item ids exist. With ``context`` each text is stored
    with the context an LLM answer has: an item's description line (title, year, genres),
    so the encoder sees ``Item: ... Facts: <text>``; with ``as_of`` (``Split.as_of``) also a
    user's history strictly before their as-of instant (``User history: ... Preferences:
    <text>``), stored with that instant. ``context=False``: the encoder sees the text only
    (``Facts: <text>``), for texts that say everything themselves.
    """
    file = str(path)
    source = check_source(source or default_source(path))
    frame = read_texts(path)
    rejects = RejectLog()
    good = validate_texts(frame, dataset, file, rejects)
    report = ImportReport(source=source, file=file, rows_read=frame.height)
    report.rejected = rejects.counts()
    if rejects_dir is not None:
        out = Path(rejects_dir) / f"knowledge_import_{source}_rejects.csv"
        report.rejects_kept = append_rejects(out, rejected_rows(rejects, frame))
        report.rejects_file = str(out)
    contexts: dict[tuple[str, str], tuple[str, datetime | None]] = {}
    item_ids = good.filter(pl.col("entity_type") == "item")["entity_id"].to_list()
    if context and item_ids:
        for p in build_item_prompts(dataset, scenario, item_ids):
            contexts["item", p.entity_id] = (p.context_text, None)
    if context and as_of is not None:
        known = set(as_of["user_id"].cast(pl.Utf8).to_list())
        user_ids = [
            u for u in good.filter(pl.col("entity_type") == "user")["entity_id"] if u in known
        ]
        for p in build_user_prompts(dataset, scenario, as_of, user_ids) if user_ids else []:
            contexts["user", p.entity_id] = (p.context_text, p.as_of)
    model = f"import:{source}"
    now = datetime.now(UTC)
    rows = []
    for entity_type, entity_id, kind, text, row in good.iter_rows():
        digest = content_hash(text)
        lineage = {"source": source, "file": file, "row": row, "content_hash": digest}
        context_text, instant = contexts.get((entity_type, entity_id), ("", None))
        rows.append(
            {
                "entity_type": entity_type,
                "entity_id": entity_id,
                "kind": kind,
                "scenario": scenario.name,
                "prompt_hash": digest,
                "prompt_version": IMPORT_VERSION,
                "model": model,
                "sampling_key": IMPORTED_SAMPLING_KEY,
                "sampling_params": "{}",
                "prompt_text": json.dumps(lineage, ensure_ascii=False),
                "context_text": context_text,
                "answer": text,
                "status": "ok",
                "flag_reason": None,
                "attempts": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "finish_reason": FINISH_REASON,
                "as_of": instant,
                "created_at": now,
            }
        )
        report.by_kind[entity_type] = report.by_kind.get(entity_type, 0) + 1
    _write(store, rows, model, scenario.name, report)
    log.info("knowledge import %s", report.summary())
    return report


def rejected_rows(rejects: RejectLog, frame: pl.DataFrame) -> pl.DataFrame:
    """The rejects with each row's ``entity_id`` and ``kind`` as the file has them (``frame``:
    :func:`read_texts`'s rows) and this import's time, all as strings."""
    raw = frame.select(
        pl.col(ROW).cast(pl.Int64).alias("row"),
        pl.col(RAW_ID).alias("entity_id"),
        pl.col(RAW_KIND).alias("kind"),
    )
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    out = rejects.frame().join(raw, on="row", how="left", maintain_order="left")
    return out.with_columns(pl.lit(stamp).alias("imported_at")).cast(pl.Utf8)


def append_rejects(path: Path, rows: pl.DataFrame) -> int:
    """Append ``rows`` to the CSV at ``path`` (created, header only, when there is nothing
    yet); returns the number of earlier rows kept. Written to a temporary name then renamed,
    so a crash never loses the earlier rejects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = pl.read_csv(path, infer_schema=False) if path.is_file() else rows.clear()
    if path.is_file() and rows.height == 0:
        return earlier.height
    tmp = path.with_name(f".{path.name}.tmp")
    pl.concat([earlier, rows], how="diagonal_relaxed").write_csv(tmp)
    tmp.replace(path)
    return earlier.height


def imported_since(
    store: KnowledgeStore, scenario: str, since: datetime | None
) -> tuple[list[str], list[str]]:
    """(user ids, item ids) whose imported text was stored after ``since`` (all if None):
    what a refresh must re-publish besides users with new events and new items."""
    t = store.table
    stmt = sa.select(t.c.entity_type, t.c.entity_id).where(
        t.c.sampling_key == IMPORTED_SAMPLING_KEY, t.c.scenario == scenario
    )
    if since is not None:
        stmt = stmt.where(t.c.created_at > since)
    with store.engine.connect() as conn:
        rows = set(conn.execute(stmt))
    users = sorted(e for kind, e in rows if kind == "user")
    items = sorted(e for kind, e in rows if kind == "item")
    return users, items


def forget_source(store: KnowledgeStore, source: str, scenario: str | None = None) -> int:
    """Delete every text imported from ``source`` (of ``scenario``, or all); the number
    deleted. Those entities fall back to the LLM's answer (``kar generate`` asks again)."""
    t = store.table
    stmt = sa.delete(t).where(
        t.c.model == f"import:{check_source(source)}", t.c.sampling_key == IMPORTED_SAMPLING_KEY
    )
    if scenario is not None:
        stmt = stmt.where(t.c.scenario == scenario)
    with store.engine.begin() as conn:
        return int(conn.execute(stmt).rowcount)


def imported_sources(store: KnowledgeStore) -> pl.DataFrame:
    """One row per imported source and kind: source, scenario, kind, texts, last import."""
    t = store.table
    stmt = (
        sa.select(
            t.c.model,
            t.c.scenario,
            t.c.kind,
            sa.func.count().label("texts"),
            sa.func.max(t.c.created_at).label("last_import"),
        )
        .where(t.c.sampling_key == IMPORTED_SAMPLING_KEY)
        .group_by(t.c.model, t.c.scenario, t.c.kind)
        .order_by(t.c.model, t.c.scenario, t.c.kind)
    )
    with store.engine.connect() as conn:
        rows = [
            (m.removeprefix("import:"), s, k, int(n), str(when))
            for m, s, k, n, when in conn.execute(stmt)
        ]
    return pl.DataFrame(
        rows,
        schema=["source", "scenario", "kind", "texts", "last_import"],
        orient="row",
    )


def _write(
    store: KnowledgeStore, rows: list[dict], model: str, scenario: str, report: ImportReport
) -> None:
    """Insert new texts and replace changed ones (text, or the context stored with it), in
    one transaction."""
    t = store.table
    stmt = sa.select(
        t.c.id, t.c.entity_type, t.c.entity_id, t.c.kind, t.c.prompt_hash, t.c.scenario,
        t.c.context_text, t.c.as_of,
    ).where(t.c.model == model, t.c.sampling_key == IMPORTED_SAMPLING_KEY)  # fmt: skip
    stored: dict[tuple[str, str, str], list[tuple[int, tuple]]] = {}
    with store.engine.connect() as conn:
        for rid, etype, eid, kind, digest, scen, context, as_of in conn.execute(stmt):
            same = (digest, scen, context, to_utc(as_of))
            stored.setdefault((etype, eid, kind), []).append((rid, same))
    inserts, stale = [], []
    for row in rows:
        earlier = stored.get((row["entity_type"], row["entity_id"], row["kind"]), [])
        identity = (row["prompt_hash"], scenario, row["context_text"], to_utc(row["as_of"]))
        if len(earlier) == 1 and earlier[0][1] == identity:
            report.unchanged += 1
            continue
        if earlier:
            report.replaced += 1
            stale.extend(rid for rid, _ in earlier)
        else:
            report.imported += 1
        inserts.append(row)
    with store.engine.begin() as conn:
        for start in range(0, len(stale), _DELETE_CHUNK):
            conn.execute(sa.delete(t).where(t.c.id.in_(stale[start : start + _DELETE_CHUNK])))
        if inserts:
            conn.execute(t.insert(), inserts)
