"""Ledger: exactly-once ingestion, atomic batches, hourly aggregates, schema versions."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deepserve.operator.metering import LedgerError, UsageLedger, parse_bound
from deepserve.operator.metering.schema import SCHEMA_VERSION

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)  # as in conftest.build_event


def _count(ledger: UsageLedger) -> int:
    return ledger.event_count()


def test_duplicates_are_counted_once(ledger, make_event) -> None:
    events = [make_event(i) for i in range(10)]
    first = ledger.ingest([*events, events[0]])  # a repeat inside the batch
    assert len(first.accepted) == 10 and first.duplicates == [events[0].event_id]
    again = ledger.ingest([*events[5:], make_event(10)])
    assert again.accepted == [make_event(10).event_id] and len(again.duplicates) == 5
    rows = ledger.usage_rows(T0, T0 + timedelta(hours=1))
    assert len(rows) == 1 and rows[0].requests == 11
    assert rows[0].prompt_tokens == sum(make_event(i).prompt_tokens for i in range(11))


def test_statuses_and_hours_are_aggregated(ledger, make_event) -> None:
    ledger.ingest([make_event(0), make_event(1, status="error", generated_tokens=0),
                   make_event(2, status="cancelled", generated_tokens=3),
                   make_event(4000), make_event(5, account="globex")])
    rows = ledger.usage_rows(T0, T0 + timedelta(hours=3))
    assert [(r.start.hour, r.account, r.requests) for r in rows] == [
        (10, "acme", 3), (10, "globex", 1), (11, "acme", 1)]
    assert (rows[0].ok, rows[0].errors, rows[0].cancelled) == (1, 1, 1)
    assert rows[0].generated_tokens == 20 + 0 + 3
    only = ledger.usage_rows(T0, T0 + timedelta(hours=3), account="globex")
    assert [r.account for r in only] == ["globex"]


def test_unaligned_windows_agree_with_aggregates(ledger, make_event) -> None:
    ledger.ingest([make_event(i * 97) for i in range(80)])
    aligned = ledger.usage_rows(T0, T0 + timedelta(hours=3))
    from_events = ledger.usage_rows(T0 - timedelta(seconds=1), T0 + timedelta(hours=3))
    assert [(r.requests, r.prompt_tokens, r.generated_tokens) for r in aligned] == [
        (r.requests, r.prompt_tokens, r.generated_tokens) for r in from_events]
    clipped = ledger.usage_rows(T0 + timedelta(minutes=30), T0 + timedelta(minutes=45))
    assert clipped[0].start == T0 + timedelta(minutes=30)
    assert clipped[0].end == T0 + timedelta(minutes=45)
    assert clipped[0].requests == sum(1 for i in range(80) if 1800 <= i * 97 + 1 < 2700)


def test_unknown_account_rejects_the_whole_batch(ledger, make_event) -> None:
    ledger.set_accounts({"acme": "ACME Corp"})
    with pytest.raises(LedgerError) as err:
        ledger.ingest([make_event(0), make_event(1, account="mallory")])
    assert err.value.field == "account" and err.value.index == 1
    assert _count(ledger) == 0
    assert ledger.usage_rows(T0, T0 + timedelta(hours=1)) == []


def test_malformed_event_rejects_the_batch_naming_index_and_field(ledger, make_event) -> None:
    good = make_event(0).to_dict()
    bad = {**make_event(1).to_dict(), "generated_tokens": -5}
    with pytest.raises(LedgerError, match=r"events\[1\]\.generated_tokens: must not be negative"):
        ledger.ingest_dicts([good, bad])
    assert _count(ledger) == 0
    with pytest.raises(LedgerError, match=r"events\[0\]\.event"):
        ledger.ingest_dicts(["not an object"])


def test_inverted_and_naive_windows_are_refused(ledger) -> None:
    with pytest.raises(LedgerError, match="to: must be after from"):
        ledger.usage_rows(T0, T0 - timedelta(hours=1))
    with pytest.raises(LedgerError, match="from"):
        ledger.usage_rows(T0.replace(tzinfo=None), T0)
    assert parse_bound("2026-11-01", "from") == T0.replace(hour=0)
    with pytest.raises(LedgerError, match="to: needs a UTC offset"):
        parse_bound("2026-11-01T10:00:00", "to")
    with pytest.raises(LedgerError, match="from: not an ISO-8601"):
        parse_bound("yesterday", "from")


def test_reopen_keeps_data_and_schema_version(tmp_path: Path, make_event) -> None:
    path = tmp_path / "l.db"
    with UsageLedger(path) as led:
        led.ingest([make_event(1)])
    with UsageLedger(path) as led:
        assert led.schema_version == SCHEMA_VERSION
        assert led.ingest([make_event(1)]).duplicates == [make_event(1).event_id]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        UsageLedger(path)


def test_listener_sees_only_new_events(ledger, make_event) -> None:
    seen: list[str] = []
    ledger.add_listener(lambda events: seen.extend(e.request_id for e in events))
    ledger.ingest([make_event(1), make_event(2)])
    ledger.ingest([make_event(2), make_event(3)])
    assert seen == ["req-1", "req-2", "req-3"]
