"""The usage ledger: a SQLite (WAL) database of usage events, hourly aggregates, GPU time,
scraped counter deltas and price history.

Every write is one transaction: a batch of events is either stored whole (with its hourly
aggregates) or not at all. Ingestion is idempotent on ``event_id``. With the default
``synchronous=FULL`` a call that returned has been fsync'd to the WAL, so what the
ingest endpoint acknowledges survives kill -9 and power loss (docs/metering.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deepserve.engine.usage import UsageEvent, UsageEventError
from deepserve.operator.metering.base import (
    EPOCH,
    HOUR_US,
    LedgerError,
    check_window,
    chunks,
    from_us,
    parse_bound,
    to_us,
)
from deepserve.operator.metering.ledger_resources import GpuRow, ResourceAccounting
from deepserve.operator.metering.pricing import PriceSheet
from deepserve.operator.metering.schema import migrate

log = logging.getLogger(__name__)
_ONE_US = timedelta(microseconds=1)

__all__ = ["EPOCH", "HOUR_US", "GpuRow", "IngestResult", "LedgerError", "UsageLedger",
           "UsageRow", "check_window", "from_us", "parse_bound", "to_us"]

@dataclasses.dataclass(frozen=True)
class IngestResult:
    """Which event ids of a batch were newly stored and which were already present."""

    accepted: list[str]
    duplicates: list[str]


@dataclasses.dataclass(frozen=True)
class UsageRow:
    """Usage of one account/model/version within [start, end) (at most one UTC hour)."""

    start: datetime
    end: datetime
    account: str
    namespace: str
    model: str
    version: str
    requests: int
    ok: int
    cancelled: int
    errors: int
    prompt_tokens: int
    generated_tokens: int
    compute_ms: float


_EVENT_INSERT = (
    "INSERT INTO events (event_id, namespace, model, version, account, tenant, request_id, "
    "prompt_tokens, generated_tokens, compute_ms, precision, status, started_us, ended_us, "
    "queue_ms, ttft_ms, ingested_us) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_USAGE_UPSERT = (
    "INSERT INTO usage_hourly VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT DO UPDATE SET requests=requests+excluded.requests, ok=ok+excluded.ok, "
    "cancelled=cancelled+excluded.cancelled, errors=errors+excluded.errors, "
    "prompt_tokens=prompt_tokens+excluded.prompt_tokens, "
    "generated_tokens=generated_tokens+excluded.generated_tokens, "
    "compute_ms=compute_ms+excluded.compute_ms"
)


_EVENT_INSERT_OR_IGNORE = _EVENT_INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)
_STATUS_SLOT = {"ok": 1, "cancelled": 2, "error": 3}


def _dedupe(events: Sequence[UsageEvent], existing: set[str]
            ) -> tuple[list[UsageEvent], list[str]]:
    """Split into events not in ``existing`` (first occurrence) and duplicate ids."""
    fresh: list[UsageEvent] = []
    duplicates: list[str] = []
    for e in events:
        if e.event_id in existing:
            duplicates.append(e.event_id)
        else:
            existing.add(e.event_id)
            fresh.append(e)
    return fresh, duplicates


def _event_rows(events: Sequence[UsageEvent], ingested_us: int) -> list[tuple[Any, ...]]:
    return [(e.event_id, e.namespace, e.model, e.version, e.account, e.tenant, e.request_id,
             e.prompt_tokens, e.generated_tokens, e.compute_ms, e.precision, e.status,
             to_us(e.started_at), to_us(e.ended_at), e.queue_ms, e.ttft_ms, ingested_us)
            for e in events]


def _hourly_rows(events: Sequence[UsageEvent]) -> list[tuple[Any, ...]]:
    hourly: dict[tuple[int, str, str, str, str], list[Any]] = {}
    for e in events:
        end_us = to_us(e.ended_at)
        key = (end_us - end_us % HOUR_US, e.account, e.namespace, e.model, e.version)
        agg = hourly.get(key)
        if agg is None:
            agg = hourly[key] = [0, 0, 0, 0, 0, 0, 0.0]
        agg[0] += 1
        agg[_STATUS_SLOT[e.status]] += 1
        agg[4] += e.prompt_tokens
        agg[5] += e.generated_tokens
        agg[6] += e.compute_ms
    return [(*k, *v) for k, v in hourly.items()]


class UsageLedger(ResourceAccounting):
    """The durable ledger. Thread-safe; one writer process per database file.

    ``synchronous`` is SQLite's ``PRAGMA synchronous``: ``FULL`` (default) makes each
    committed batch durable across power loss; ``NORMAL`` only across process crashes.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous: must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: random uuid index pages
        self._listeners: list[Any] = []
        with self._lock:
            self.schema_version = migrate(self._conn)

    def close(self) -> None:
        """Close the database (a WAL checkpoint happens on last close)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> UsageLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_listener(self, callback: Any) -> None:
        """Call ``callback(events)`` with newly accepted events after each commit."""
        self._listeners.append(callback)

    # -- transactions -------------------------------------------------------------
    def _write(self, work: Any) -> Any:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._conn)
                self._conn.execute("COMMIT")
                return result
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- accounts -----------------------------------------------------------------
    def set_accounts(self, accounts: Mapping[str, str | None]) -> None:
        """Replace the known billing accounts (id -> display name). When any are set,
        events for other accounts are refused."""
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM accounts")
            conn.executemany("INSERT INTO accounts VALUES (?, ?)", sorted(accounts.items()))
        self._write(work)

    def accounts(self) -> dict[str, str | None]:
        """Known billing accounts (empty = any account is accepted)."""
        return dict(self._read("SELECT account, name FROM accounts ORDER BY account"))

    # -- events -------------------------------------------------------------------
    def ingest_dicts(self, raw: Sequence[Any]) -> IngestResult:
        """Validate wire-form events, then :meth:`ingest` them. Raises LedgerError naming
        the index and field of the first bad event; nothing of the batch is written."""
        events: list[UsageEvent] = []
        for i, item in enumerate(raw):
            try:
                events.append(UsageEvent.from_dict(item))
            except UsageEventError as err:
                event_id = item.get("event_id") if isinstance(item, Mapping) else None
                raise LedgerError(err.field, err.message, index=i, event_id=event_id) from None
            except TypeError as err:
                raise LedgerError("event", str(err), index=i) from None
        return self.ingest(events)

    def ingest(self, events: Sequence[UsageEvent], *, now: datetime | None = None) -> IngestResult:
        """Store new events and their hourly aggregates in one transaction.

        Duplicate ids (already stored, or repeated in the batch) are skipped and reported.
        Raises LedgerError (nothing written) for an unknown account when accounts are set.
        """
        known = self.accounts()
        if known:
            for i, e in enumerate(events):
                if e.account not in known:
                    raise LedgerError("account", f"unknown billing account {e.account!r}",
                                      index=i, event_id=e.event_id)
        ingested_us = to_us(now or datetime.now(UTC))

        def work(conn: sqlite3.Connection) -> tuple[IngestResult, list[UsageEvent]]:
            # Fast path: duplicates are rare (retries), so insert first and only look the
            # ids up when the number of rows inserted shows that some were already stored.
            fresh, duplicates = _dedupe(events, set())
            conn.execute("SAVEPOINT batch")
            before = conn.total_changes
            conn.executemany(_EVENT_INSERT_OR_IGNORE, _event_rows(fresh, ingested_us))
            if conn.total_changes - before != len(fresh):
                conn.execute("ROLLBACK TO batch")
                existing: set[str] = set()
                ids = [e.event_id for e in fresh]
                for chunk in chunks(ids, 900):
                    marks = ",".join("?" * len(chunk))
                    existing.update(r[0] for r in conn.execute(
                        f"SELECT event_id FROM events WHERE event_id IN ({marks})", chunk))
                fresh, more = _dedupe(fresh, existing)
                duplicates += more
                conn.executemany(_EVENT_INSERT, _event_rows(fresh, ingested_us))
            conn.execute("RELEASE batch")
            conn.executemany(_USAGE_UPSERT, _hourly_rows(fresh))
            return IngestResult([e.event_id for e in fresh], duplicates), fresh

        result, fresh = self._write(work)
        for callback in self._listeners:
            try:
                callback(fresh)
            except Exception:  # a monitoring bug must never fail ingestion
                log.exception("usage listener failed")
        return result

    def iter_events(self, start: datetime, end: datetime, account: str | None = None,
                    batch: int = 10_000) -> Iterator[tuple[Any, ...]]:
        """Yield stored event rows with ``start <= ended_at < end`` ordered by
        (ended_at, event_id): (event_id, namespace, model, version, account, tenant,
        request_id, prompt_tokens, generated_tokens, compute_ms, precision, status,
        started_us, ended_us, queue_ms, ttft_ms)."""
        check_window(start, end)
        sql = ("SELECT event_id, namespace, model, version, account, tenant, request_id, "
               "prompt_tokens, generated_tokens, compute_ms, precision, status, started_us, "
               "ended_us, queue_ms, ttft_ms FROM events WHERE ended_us >= ? AND ended_us < ?"
               + (" AND account = ?" if account else "") + " ORDER BY ended_us, event_id")
        params: list[Any] = [to_us(start), to_us(end)] + ([account] if account else [])
        if self.path == ":memory:":
            yield from self._read(sql, params)
            return
        # A separate connection reads one consistent WAL snapshot while ingestion goes on.
        reader = sqlite3.connect(self.path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            cursor = reader.execute(sql, params)
            while rows := cursor.fetchmany(batch):
                yield from rows
        finally:
            reader.close()

    def usage_rows(self, start: datetime, end: datetime,
                   account: str | None = None) -> list[UsageRow]:
        """Hourly usage in the window, ordered; partial hours at the edges are clipped.

        Hour-aligned windows read the maintained ``usage_hourly`` aggregates; others
        aggregate the events themselves (same result for the hours they share).
        """
        check_window(start, end)
        s_us, e_us = to_us(start), to_us(end)
        acct = " AND account = ?" if account else ""
        params: list[Any] = [s_us, e_us] + ([account] if account else [])
        cols = "account, namespace, model, version"
        if s_us % HOUR_US == 0 and e_us % HOUR_US == 0:
            rows = self._read(
                f"SELECT hour_us, {cols}, requests, ok, cancelled, errors, prompt_tokens, "
                f"generated_tokens, compute_ms FROM usage_hourly WHERE hour_us >= ? AND "
                f"hour_us < ?{acct} ORDER BY hour_us, {cols}", params)
        else:
            rows = self._read(
                f"SELECT ended_us - ended_us % {HOUR_US} AS h, {cols}, COUNT(*), "
                "SUM(status = 'ok'), SUM(status = 'cancelled'), SUM(status = 'error'), "
                "SUM(prompt_tokens), SUM(generated_tokens), SUM(compute_ms) FROM events "
                f"WHERE ended_us >= ? AND ended_us < ?{acct} GROUP BY h, {cols} "
                f"ORDER BY h, {cols}", params)
        return [UsageRow(max(start, from_us(r[0])), min(end, from_us(r[0] + HOUR_US)), *r[1:])
                for r in rows]

    # -- prices -------------------------------------------------------------------
    def set_prices(self, sheet: PriceSheet, effective_from: datetime) -> None:
        """Record a price sheet effective from ``effective_from`` (must be tz-aware).
        Usage before that time keeps the prices that were effective then."""
        check_window(effective_from, effective_from + _ONE_US)
        self._write(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO prices VALUES (?, ?)", (to_us(effective_from), sheet.to_json())))

    def price_history(self) -> list[tuple[datetime, PriceSheet]]:
        """All price sheets with their effective times, oldest first."""
        return [(from_us(us), PriceSheet.from_dict(json.loads(sheet)))
                for us, sheet in self._read("SELECT effective_us, sheet FROM prices ORDER BY 1")]

    # -- GPU time -----------------------------------------------------------------
