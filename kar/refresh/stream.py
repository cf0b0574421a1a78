"""Streaming refresh from a Redis Stream: consumer group, micro-batches, dead letters.

Each event is a stream entry with fields ``user_id``, ``item_id``, ``timestamp`` (ISO
8601 or Unix seconds) and ``rating`` or ``label``. A micro-batch (up to ``batch_size``
events, or what arrived within ``wait_ms``) is validated; malformed entries go to the
dead-letter stream with the reason; valid ones are stored (by message id, so a
redelivery adds nothing), the users they touch are refreshed, and only after the run has
published and committed are the entries acknowledged. A consumer killed before that
gets the same entries again (its pending list, or another consumer claims them).

The Redis URL's password is registered with :mod:`kar.redaction`; every Redis failure
(a bad URL, unreachable, a refused AUTH, a connection lost mid-run) is a one-line
:class:`~kar.errors.KarError` naming the redacted URL.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from kar.data.schema import to_utc
from kar.errors import KarError
from kar.pipeline import load_data
from kar.redaction import redact, redact_url
from kar.refresh.report import RefreshReport
from kar.refresh.run import execute_run
from kar.refresh.state import RefreshState

if TYPE_CHECKING:
    from kar.data.schema import Dataset
    from kar.project import ProjectFolder

REQUIRED_FIELDS = ("user_id", "item_id", "timestamp")


def connect(url: str) -> Any:
    """A Redis client for ``url`` (checked with a PING); a bad URL, an unreachable server
    or a refused AUTH is a :class:`KarError` with the password redacted."""
    import redis

    shown = redact_url(url)  # registers the password before anything can echo it
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
    except ValueError as exc:
        raise KarError(redact(f"bad Redis URL {shown}: {exc}")) from None
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise KarError(redact(f"Redis at {shown} refused the credentials: {exc}")) from None
    except redis.RedisError as exc:
        raise KarError(redact(f"cannot reach Redis at {shown}: {exc}")) from None
    return client


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_event(fields: dict[Any, Any], catalog: set[str], label_threshold: float) -> dict:
    """A valid event as a row, or ValueError naming the bad field."""
    data = {_text(k): _text(v).strip() for k, v in fields.items()}
    for name in REQUIRED_FIELDS:
        if not data.get(name):
            raise ValueError(f"field {name!r} is missing or empty")
    if data["item_id"] not in catalog:
        raise ValueError(f"field 'item_id': {data['item_id']!r} is not in the catalog")
    raw = data["timestamp"]
    try:
        if raw.replace(".", "", 1).isdigit():
            ts = datetime.fromtimestamp(float(raw), UTC)
        else:
            ts = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            ts = to_utc(ts)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"field 'timestamp': {raw!r} is not ISO 8601 or Unix seconds") from None
    rating = label = None
    if data.get("rating"):
        try:
            rating = float(data["rating"])
        except ValueError:
            raise ValueError(f"field 'rating': {data['rating']!r} is not a number") from None
        if not math.isfinite(rating):
            raise ValueError(f"field 'rating': {data['rating']!r} is not finite")
        label = int(rating >= label_threshold)
    if data.get("label"):
        if data["label"] not in ("0", "1"):
            raise ValueError(f"field 'label': {data['label']!r} must be 0 or 1")
        label = int(data["label"])
    if label is None:
        raise ValueError("one of the fields 'rating' or 'label' is needed")
    return {
        "user_id": data["user_id"],
        "item_id": data["item_id"],
        "timestamp": ts,
        "rating": rating,
        "label": label,
    }


@dataclass
class BatchReport:
    """One micro-batch: entries read, dead-lettered, acknowledged, and the refresh runs."""

    read: int = 0
    dead: int = 0
    acked: int = 0
    runs: list[RefreshReport] = field(default_factory=list)

    def summary(self) -> str:
        runs = "; ".join(r.summary() for r in self.runs) or "no refresh"
        return f"{self.read} entries, {self.dead} dead-lettered, {self.acked} acked: {runs}"


class StreamRefresher:
    """Consume interaction events from a Redis Stream and refresh the users they touch."""

    def __init__(
        self,
        project: ProjectFolder,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        stream: str = "kar:interactions",
        group: str = "kar-refresh",
        consumer: str = "refresh-1",
        dead_letter: str | None = None,
        batch_size: int = 100,
        wait_ms: int = 1000,
        claim_idle_ms: int = 60_000,
    ) -> None:
        import redis

        from kar.generation import KnowledgeStore

        if batch_size < 1 or wait_ms < 0:
            raise KarError("batch_size must be >= 1 and wait_ms >= 0")
        self.project = project
        self.shown_url = redact_url(url)
        self.redis = connect(url)
        self.stream, self.group, self.consumer = stream, group, consumer
        self.dead_letter = dead_letter or f"{stream}:dead"
        self.batch_size, self.wait_ms, self.claim_idle_ms = batch_size, wait_ms, claim_idle_ms
        self.source = f"redis:{stream}"
        self.store = KnowledgeStore(project.knowledge_store_url)
        self.state = RefreshState(self.store)
        self._dataset: Dataset | None = None
        try:
            self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise KarError(
                    redact(f"cannot create consumer group {group} on {stream}: {exc}")
                ) from None
        except redis.RedisError as exc:
            raise KarError(redact(f"Redis at {self.shown_url} failed: {exc}")) from None

    # -- reading ---------------------------------------------------------------------------
    def _read(self) -> list[tuple[str, dict]]:
        """Own pending entries first (a restart), then idle ones of dead consumers, then new."""
        own = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: "0"}, count=self.batch_size
        )
        entries = own[0][1] if own else []
        if not entries:
            claimed = self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id="0-0",
                count=self.batch_size,
            )
            entries = claimed[1]
        if not entries:
            deadline = time.monotonic() + self.wait_ms / 1000
            while len(entries) < self.batch_size:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 and entries:
                    break
                got = self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=self.batch_size - len(entries),
                    block=max(left_ms, 1),
                )
                if got:
                    entries.extend(got[0][1])
                elif time.monotonic() >= deadline:
                    break
        return [(_text(mid), fields) for mid, fields in entries if fields is not None]

    def dataset(self) -> Dataset:
        """The project's data plus every event this stream has delivered so far."""
        if self._dataset is None:
            self._dataset, _ = load_data(self.project)
        base = self._dataset
        events = self.state.stream_events(self.source)
        if not events:
            return base
        extra = pl.DataFrame(
            [{k: e[k] for k in base.interactions.columns} for e in events],
            schema=base.interactions.schema,
        )
        interactions = pl.concat([base.interactions, extra]).unique(
            ["user_id", "item_id", "timestamp"], keep="first", maintain_order=True
        )
        return type(base)(
            name=base.name,
            interactions=interactions,
            items=base.items,
            users=base.users,
            scenario=base.scenario,
            meta=base.meta,
        )

    # -- one micro-batch -------------------------------------------------------------------
    def process_once(self) -> BatchReport:
        """Read one micro-batch, dead-letter bad entries, refresh, then acknowledge."""
        report = BatchReport()
        entries = self._read()
        report.read = len(entries)
        catalog = set(self.dataset().items["item_id"].to_list())
        threshold = self.project.settings.dataset.label_threshold
        threshold = 4.0 if threshold is None else threshold  # load_data's MovieLens default
        valid, ack_now = [], []
        for mid, fields in entries:
            try:
                valid.append({"message_id": mid, **parse_event(fields, catalog, threshold)})
            except ValueError as exc:
                dead = {"message_id": mid, "stream": self.stream, "reason": str(exc)}
                dead.update({f"field:{_text(k)}": v for k, v in fields.items()})
                self.redis.xadd(self.dead_letter, dead)
                ack_now.append(mid)
                report.dead += 1
        if ack_now:  # dead letters are safely stored: acknowledge them at once
            report.acked += self.redis.xack(self.stream, self.group, *ack_now)
        self.state.add_events(self.source, valid)
        report.runs = self.refresh_pending()
        ok = [row["message_id"] for row in valid]
        if ok:
            report.acked += self.redis.xack(self.stream, self.group, *ok)
        return report

    def refresh_pending(self) -> list[RefreshReport]:
        """Finish a crashed run, then refresh the users of every event no run covered."""
        reports = []
        pending = self.state.pending(self.source)
        if pending is not None:
            rep = RefreshReport(source=self.source, resumed=True)
            reports.append(
                execute_run(self.project, self.state, self.store, pending, self.dataset(), rep)
            )
        events = self.state.stream_events(self.source, unprocessed=True)
        if events:
            old = self.state.watermark(self.source)
            new_wm = max(e["timestamp"] for e in events)
            new_wm = max(new_wm, old) if old else new_wm
            run = self.state.start(
                self.source,
                old,
                new_wm,
                sorted({e["user_id"] for e in events}),
                [],
                len(events),
                messages=[e["message_id"] for e in events],
            )
            rep = RefreshReport(source=self.source)
            reports.append(
                execute_run(self.project, self.state, self.store, run, self.dataset(), rep)
            )
        return reports

    def run_forever(self, max_batches: int | None = None, on_batch: Any = None) -> int:
        """Process micro-batches until interrupted (or ``max_batches``); returns batches."""
        import redis

        done = 0
        while max_batches is None or done < max_batches:
            try:
                report = self.process_once()
            except redis.RedisError as exc:
                raise KarError(
                    redact(
                        f"Redis at {self.shown_url} failed after {done} micro-batch(es) "
                        f"({type(exc).__name__}: {exc}); unacknowledged events are "
                        "delivered again on restart"
                    )
                ) from None
            done += 1
            if on_batch is not None and report.read:
                on_batch(report)
        return done
