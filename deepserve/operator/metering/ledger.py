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
    from_us,
    parse_bound,
    to_us,
)
from deepserve.operator.metering.event_store import (
    USAGE_UPSERT,
    StoredEvent,
    chunk_rows,
    decode_chunk,
    hourly_rows,
    merge_chunks,
    window_rows,
)
from deepserve.operator.metering.ledger_resources import GpuRow, ResourceAccounting
from deepserve.operator.metering.pricing import PriceSheet
from deepserve.operator.metering.quarantine import QuarantineStore
from deepserve.operator.metering.schema import migrate
from deepserve.operator.metering.stored_ids import StoredIds
from deepserve.operator.metering.trust import IngestTrust
from deepserve.operator.metering.wire import Row, decode_batch, id_bytes, stored_real

log = logging.getLogger(__name__)
_ONE_US = timedelta(microseconds=1)

__all__ = ["EPOCH", "HOUR_US", "GpuRow", "IngestResult", "LedgerError", "UsageLedger",
           "UsageRow", "check_window", "from_us", "parse_bound", "to_us"]

@dataclasses.dataclass(frozen=True)
class IngestResult:
    """Which event ids of a batch were newly stored, which were already present, and
    which were quarantined (kept, not billed: trust.py)."""

    accepted: list[str]
    duplicates: list[str]
    quarantined: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class UsageRow:
    """Usage of one account/model/version and tenant within [start, end) (at most one
    UTC hour). ``account`` is the model owner's; ``tenant`` the caller (None: none set)."""

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
    tenant: str | None = None

    @property
    def payer(self) -> str:
        """Who is billed for these requests and tokens: the tenant, else the account."""
        return self.tenant or self.account


_CHUNK_INSERT = ("INSERT INTO event_chunks (hour_us, first_end_us, last_end_us, count, "
                 "ingested_us, events) VALUES (?,?,?,?,?,?)")
_CHUNKS_IN_WINDOW = (
    "SELECT first_end_us, last_end_us, events FROM event_chunks WHERE hour_us >= ? AND "
    "hour_us < ? AND last_end_us >= ? AND first_end_us < ? ORDER BY hour_us, first_end_us")


def _dedupe(rows: list[Row], keys: list[bytes], existing: set[bytes]
            ) -> tuple[list[Row], list[bytes], list[str]]:
    """Split into rows whose key is not in ``existing`` (first occurrence) and duplicate ids."""
    fresh: list[Row] = []
    fresh_keys: list[bytes] = []
    duplicates: list[str] = []
    for row, key in zip(rows, keys, strict=True):
        if key in existing:
            duplicates.append(row[0])
        else:
            existing.add(key)
            fresh.append(row)
            fresh_keys.append(key)
    return fresh, fresh_keys, duplicates


def _event_row(e: UsageEvent, index: int) -> Row:
    try:
        cms = stored_real(e.compute_ms)
        qms = None if e.queue_ms is None else stored_real(e.queue_ms)
        tms = None if e.ttft_ms is None else stored_real(e.ttft_ms)
    except OverflowError:
        field = next(f for f in ("compute_ms", "queue_ms", "ttft_ms")
                     if isinstance(getattr(e, f), int) and abs(getattr(e, f)) >= 2**63)
        raise LedgerError(field, "implausibly large", index=index, event_id=e.event_id) from None
    return (e.event_id, e.namespace, e.model, e.version, e.account, e.tenant, e.request_id,
            e.prompt_tokens, e.generated_tokens, cms, e.precision, e.status,
            to_us(e.started_at), to_us(e.ended_at), qms, tms)


class UsageLedger(ResourceAccounting, QuarantineStore):
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
        # Checkpoint the WAL every ~40 MiB instead of 4 MiB: a batch dirties about one id-index
        # page per event, and the pages of ten batches overlap, so each is copied back once
        # (≈ +25 % events/CPU-s at 1M events). Durability is the same: commits fsync the WAL.
        self._conn.execute("PRAGMA wal_autocheckpoint=10000")
        self._listeners: list[Any] = []
        self._ids = StoredIds()
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
        """Call ``callback(events)`` with newly accepted events after each commit: the
        ``UsageEvent`` objects given to :meth:`ingest`, or :class:`StoredEvent` rows
        (same attributes) for batches that came as JSON."""
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
    def ingest_json(self, body: bytes, trust: IngestTrust | None = None) -> IngestResult:
        """Store a JSON wire batch ``{"events": [...]}`` (the ingest endpoint's body).

        Valid batches take the fast decoder (``wire.decode_batch``); anything else is
        judged by ``json.loads`` and :meth:`ingest_dicts`, which raise what they always
        raised: JSONDecodeError, KeyError (no "events"), LedgerError naming the field.
        """
        decoded = decode_batch(body)
        if decoded is None:
            raw = json.loads(body)
            events = raw["events"] if isinstance(raw, dict) else None
            if not isinstance(events, list):
                raise LedgerError("events", 'body must be {"events": [...]}')
            return self.ingest_dicts(events, trust)
        rows, keys = decoded
        return self._ingest_rows(rows, keys, None, now=None, trust=trust)

    def ingest_dicts(self, raw: Sequence[Any], trust: IngestTrust | None = None
                     ) -> IngestResult:
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
        return self.ingest(events, trust=trust)

    def ingest(self, events: Sequence[UsageEvent], *, now: datetime | None = None,
               trust: IngestTrust | None = None) -> IngestResult:
        """Store new events and their hourly aggregates in one transaction.

        Duplicate ids (already stored, or repeated in the batch) are skipped and reported.
        Raises LedgerError (nothing written) for an unknown account when accounts are set.
        With ``trust`` (the ingest endpoint's), events of another model than the writer's
        raise CredentialRefused and events it cannot bill are quarantined (trust.py).
        """
        rows = [_event_row(e, i) for i, e in enumerate(events)]
        return self._ingest_rows(rows, [id_bytes(r[0]) for r in rows], events, now=now,
                                 trust=trust)

    def _ingest_rows(self, rows: list[Row], keys: list[bytes],
                     events: Sequence[UsageEvent] | None, *, now: datetime | None,
                     trust: IngestTrust | None = None) -> IngestResult:
        ingested_us = to_us(now or datetime.now(UTC))
        held: list[tuple[Row, bytes, str]] = []
        if trust is not None:
            trust.check_scope(rows)
            reasons = trust.reasons(rows, self.owners_of({(r[1], r[2]) for r in rows}),
                                    ingested_us)
            if any(reasons):
                held = [(r, k, why) for r, k, why in zip(rows, keys, reasons, strict=True)
                        if why]
                keep = [why is None for why in reasons]
                rows = [r for r, ok in zip(rows, keep, strict=True) if ok]
                keys = [k for k, ok in zip(keys, keep, strict=True) if ok]
                if events is not None:
                    events = [e for e, ok in zip(events, keep, strict=True) if ok]
        known = self.accounts()
        if known:
            for i, row in enumerate(rows):
                if row[4] not in known:
                    raise LedgerError("account", f"unknown billing account {row[4]!r}",
                                      index=i, event_id=row[0])

        def work(conn: sqlite3.Connection) -> tuple[IngestResult, list[Row]]:
            # Repeats inside the batch first, then ids stored before (stored_ids.py).
            fresh, fresh_keys, duplicates = _dedupe(rows, keys, set())
            stored = self._ids.stored(conn, fresh_keys)
            if stored:
                fresh, fresh_keys, more = _dedupe(fresh, fresh_keys, stored)
                duplicates += more
            self._ids.add(conn, fresh_keys)
            conn.executemany(_CHUNK_INSERT, chunk_rows(fresh, ingested_us))
            conn.executemany(USAGE_UPSERT, hourly_rows(fresh))
            held_ids: list[str] = []
            held_dups: list[str] = []
            if held:  # billed before, or in this batch
                held_keys = [k for _, k, _ in held]
                billed = self._ids.stored(conn, held_keys) | set(fresh_keys).intersection(
                    held_keys)
                held_ids, held_dups = self._hold(conn, held, ingested_us, billed)
            return IngestResult([r[0] for r in fresh], duplicates + held_dups, held_ids), fresh

        with self._lock:  # the id set learns the ids before another batch is checked
            try:
                result, fresh = self._write(work)
            except BaseException:
                self._ids.rolled_back()
                raise
            self._ids.committed()
        if self._listeners and fresh:
            if events is None:
                seen: list[Any] = [StoredEvent._make(r) for r in fresh]
            else:
                by_id = {e.event_id: e for e in reversed(events)}  # first of a repeated id
                seen = [by_id[r[0]] for r in fresh]
            for callback in self._listeners:
                try:
                    callback(seen)
                except Exception:  # a monitoring bug must never fail ingestion
                    log.exception("usage listener failed")
        return result

    def event_count(self) -> int:
        """How many usage events are stored."""
        return int(self._read("SELECT COALESCE(SUM(count), 0) FROM event_chunks")[0][0])

    def _chunks_in(self, s_us: int, e_us: int) -> Iterator[tuple[int, int, bytes]]:
        """(first_end_us, last_end_us, events) of the chunks that may hold events with
        ``s_us <= ended_us < e_us``, in order of first end time, from one snapshot."""
        params = (s_us - s_us % HOUR_US, e_us, s_us, e_us)
        if self.path == ":memory:":
            yield from self._read(_CHUNKS_IN_WINDOW, params)
            return
        # A separate connection reads one consistent WAL snapshot while ingestion goes on.
        reader = sqlite3.connect(self.path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            cursor = reader.execute(_CHUNKS_IN_WINDOW, params)
            while rows := cursor.fetchmany(64):
                yield from rows
        finally:
            reader.close()

    def iter_events(self, start: datetime, end: datetime, account: str | None = None,
                    tenant: str | None = None) -> Iterator[Row]:
        """Yield stored event rows with ``start <= ended_at < end`` (of the model owner
        ``account`` and the caller ``tenant`` where given) ordered by
        (ended_at, event_id): (event_id, namespace, model, version, account, tenant,
        request_id, prompt_tokens, generated_tokens, compute_ms, precision, status,
        started_us, ended_us, queue_ms, ttft_ms)."""
        check_window(start, end)
        s_us, e_us = to_us(start), to_us(end)
        yield from merge_chunks(
            (first, window_rows(decode_chunk(blob), first, last, s_us, e_us, account or None,
                                tenant or None))
            for first, last, blob in self._chunks_in(s_us, e_us))

    def usage_rows(self, start: datetime, end: datetime, account: str | None = None,
                   tenant: str | None = None) -> list[UsageRow]:
        """Hourly usage in the window per account, model version and tenant, ordered;
        partial hours at the edges are clipped. ``account`` keeps one model owner's rows,
        ``tenant`` one caller's.

        Hour-aligned windows read the maintained ``usage_hourly`` aggregates; others
        aggregate the events themselves (same result for the hours they share).
        """
        check_window(start, end)
        s_us, e_us = to_us(start), to_us(end)
        if s_us % HOUR_US == 0 and e_us % HOUR_US == 0:
            where, params = "", list[Any]([s_us, e_us])
            if account:
                where, params = " AND account = ?", [*params, account]
            if tenant:
                where, params = f"{where} AND tenant = ?", [*params, tenant]
            rows = self._read(
                "SELECT hour_us, account, namespace, model, version, tenant, requests, ok, "
                "cancelled, errors, prompt_tokens, generated_tokens, compute_ms FROM "
                f"usage_hourly WHERE hour_us >= ? AND hour_us < ?{where} ORDER BY hour_us, "
                "account, namespace, model, version, tenant", params)
        else:
            rows = sorted(hourly_rows(
                row for first, last, blob in self._chunks_in(s_us, e_us)
                for row in window_rows(decode_chunk(blob), first, last, s_us, e_us,
                                       account or None, tenant or None)))
        return [UsageRow(max(start, from_us(r[0])), min(end, from_us(r[0] + HOUR_US)),
                         r[1], r[2], r[3], r[4], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
                         r[5] or None) for r in rows]

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
