"""Refresh bookkeeping beside the knowledge store: watermarks, runs, the known catalog.

Three small tables in the same database as the LLM answers (SQLite or PostgreSQL):
``refresh_watermark`` (one row per data source), ``refresh_run`` (each refresh: its plan
while pending, its report once done) and ``refresh_catalog`` (item ids already seen, so a
new item is one not in it). A pending run is resumed with the same plan after a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from kar.data.schema import to_utc
from kar.generation.store import KnowledgeStore


@dataclass
class PendingRun:
    """A refresh that started and has not committed: its plan, to be redone exactly."""

    run_id: int
    source: str
    old_watermark: datetime | None
    new_watermark: datetime
    users: list[str]
    items: list[str]
    events: int
    started_at: datetime
    messages: list[str] = field(default_factory=list)  # stream message ids the run covers


class RefreshState:
    """Watermarks, runs and the known catalog, in the knowledge store's database."""

    def __init__(self, store: KnowledgeStore) -> None:
        self.engine = store.engine
        md = sa.MetaData()
        big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
        self.watermarks = sa.Table(
            "refresh_watermark",
            md,
            sa.Column("source", sa.String(255), primary_key=True),
            sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
        self.runs = sa.Table(
            "refresh_run",
            md,
            sa.Column("id", big_id, primary_key=True, autoincrement=True),
            sa.Column("source", sa.String(255), nullable=False, index=True),
            sa.Column("status", sa.String(16), nullable=False),  # pending | done
            sa.Column("old_watermark", sa.DateTime(timezone=True)),
            sa.Column("new_watermark", sa.DateTime(timezone=True), nullable=False),
            sa.Column("plan", sa.Text, nullable=False),
            sa.Column("report", sa.Text),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True)),
        )
        self.catalog = sa.Table(
            "refresh_catalog",
            md,
            sa.Column("source", sa.String(255), primary_key=True),
            sa.Column("item_id", sa.String(255), primary_key=True),
        )
        self.events = sa.Table(
            "refresh_stream_event",
            md,
            sa.Column("source", sa.String(255), primary_key=True),
            sa.Column("message_id", sa.String(64), primary_key=True),
            sa.Column("user_id", sa.String(255), nullable=False),
            sa.Column("item_id", sa.String(255), nullable=False),
            sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
            sa.Column("rating", sa.Float),
            sa.Column("label", sa.Integer),
            sa.Column("run_id", sa.BigInteger),  # null until a committed run covered it
        )
        md.create_all(self.engine)

    # -- watermarks ------------------------------------------------------------------------
    def watermark(self, source: str) -> datetime | None:
        stmt = sa.select(self.watermarks.c.watermark).where(self.watermarks.c.source == source)
        with self.engine.connect() as conn:
            return to_utc(conn.execute(stmt).scalar_one_or_none())

    def _set_watermark(self, conn: sa.Connection, source: str, watermark: datetime) -> None:
        t = self.watermarks
        values = {"watermark": to_utc(watermark), "updated_at": datetime.now(UTC)}
        if conn.execute(sa.update(t).where(t.c.source == source).values(**values)).rowcount == 0:
            conn.execute(sa.insert(t).values(source=source, **values))

    def set_watermark(self, source: str, watermark: datetime) -> None:
        """Set a source's watermark by hand (bootstrap, or replay from a date)."""
        with self.engine.begin() as conn:
            self._set_watermark(conn, source, watermark)

    # -- catalog ---------------------------------------------------------------------------
    def known_items(self, source: str) -> set[str]:
        stmt = sa.select(self.catalog.c.item_id).where(self.catalog.c.source == source)
        with self.engine.connect() as conn:
            return {row[0] for row in conn.execute(stmt)}

    def _add_items(self, conn: sa.Connection, source: str, items: list[str]) -> None:
        known = {
            row[0]
            for row in conn.execute(
                sa.select(self.catalog.c.item_id).where(self.catalog.c.source == source)
            )
        }
        rows = [{"source": source, "item_id": i} for i in sorted(set(items) - known)]
        if rows:
            conn.execute(sa.insert(self.catalog), rows)

    def add_items(self, source: str, items: list[str]) -> None:
        with self.engine.begin() as conn:
            self._add_items(conn, source, items)

    # -- runs ------------------------------------------------------------------------------
    def pending(self, source: str) -> PendingRun | None:
        t = self.runs
        stmt = (
            sa.select(t)
            .where(t.c.source == source, t.c.status == "pending")
            .order_by(t.c.id)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        plan = json.loads(row.plan)
        return PendingRun(
            run_id=int(row.id),
            source=source,
            old_watermark=to_utc(row.old_watermark),
            new_watermark=to_utc(row.new_watermark),  # type: ignore[arg-type]
            users=plan["users"],
            items=plan["items"],
            events=int(plan["events"]),
            started_at=to_utc(row.started_at),  # type: ignore[arg-type]
            messages=plan.get("messages", []),
        )

    def start(
        self,
        source: str,
        old_watermark: datetime | None,
        new_watermark: datetime,
        users: list[str],
        items: list[str],
        events: int,
        messages: list[str] | None = None,
    ) -> PendingRun:
        """Record a run's plan before any work, so a crash resumes exactly this plan."""
        started = datetime.now(UTC)
        messages = list(messages or [])
        plan = json.dumps({"users": users, "items": items, "events": events, "messages": messages})
        with self.engine.begin() as conn:
            run_id = conn.execute(
                sa.insert(self.runs).values(
                    source=source,
                    status="pending",
                    old_watermark=to_utc(old_watermark),
                    new_watermark=to_utc(new_watermark),
                    plan=plan,
                    started_at=started,
                )
            ).inserted_primary_key[0]
        return PendingRun(
            int(run_id),
            source,
            old_watermark,
            new_watermark,
            users,
            items,
            events,
            started,
            messages,
        )

    def commit(self, run: PendingRun, report: dict[str, Any]) -> None:
        """In one transaction: the run is done, the watermark moves, new items become known."""
        t = self.runs
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.id == run.run_id)
                .values(status="done", report=json.dumps(report), finished_at=datetime.now(UTC))
            )
            self._set_watermark(conn, run.source, run.new_watermark)
            self._add_items(conn, run.source, run.items)
            if run.messages:
                ev = self.events
                conn.execute(
                    sa.update(ev)
                    .where(ev.c.source == run.source, ev.c.message_id.in_(run.messages))
                    .values(run_id=run.run_id)
                )

    def last_started(self, source: str) -> datetime | None:
        """When the latest finished run of ``source`` started (None before the first)."""
        t = self.runs
        stmt = sa.select(sa.func.max(t.c.started_at)).where(
            t.c.source == source, t.c.status == "done"
        )
        with self.engine.connect() as conn:
            return to_utc(conn.execute(stmt).scalar_one_or_none())

    def reports(self, source: str | None = None) -> list[dict[str, Any]]:
        """Reports of finished runs, oldest first."""
        t = self.runs
        stmt = sa.select(t.c.report).where(t.c.status == "done").order_by(t.c.id)
        if source is not None:
            stmt = stmt.where(t.c.source == source)
        with self.engine.connect() as conn:
            return [json.loads(row[0]) for row in conn.execute(stmt)]

    # -- stream events ---------------------------------------------------------------------
    def add_events(self, source: str, rows: list[dict[str, Any]]) -> None:
        """Store validated stream events (message_id, user_id, item_id, timestamp, rating,
        label); a message id already stored is ignored (redelivery)."""
        if not rows:
            return
        ev = self.events
        ids = [r["message_id"] for r in rows]
        with self.engine.begin() as conn:
            seen = {
                row[0]
                for row in conn.execute(
                    sa.select(ev.c.message_id).where(
                        ev.c.source == source, ev.c.message_id.in_(ids)
                    )
                )
            }
            new = [{**r, "source": source} for r in rows if r["message_id"] not in seen]
            if new:
                conn.execute(sa.insert(ev), new)

    def stream_events(self, source: str, unprocessed: bool = False) -> list[dict[str, Any]]:
        """Stored events of a stream source (only those no committed run covered, if asked)."""
        ev = self.events
        stmt = sa.select(
            ev.c.message_id, ev.c.user_id, ev.c.item_id, ev.c.timestamp, ev.c.rating, ev.c.label
        ).where(ev.c.source == source)
        if unprocessed:
            stmt = stmt.where(ev.c.run_id.is_(None))
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(stmt.order_by(ev.c.message_id))]
        for row in rows:
            row["timestamp"] = to_utc(row["timestamp"])
        return rows
