"""A ledger written with schema 1 (one SQLite row per event) upgrades in place to the
chunked event store (2) and per-tenant hourly usage (3) and exports what a new ledger
exports for the same events.

``data/ledger_v1.sql`` and ``data/golden-csv-*.txt`` were written by
``data/make_ledger_v1.py`` with the schema-1 ledger: the per-event CSV is still those
bytes, so no event value changed on the way. ``golden-focus-*`` and
``golden-cloudevents-*`` were rewritten when usage became billed to the caller (the
tenant is the FOCUS BillingAccountId and the CloudEvents subject, column x_ModelAccount).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from deepserve.engine.usage import encode_batch
from deepserve.operator.metering import UsageLedger
from deepserve.operator.metering.base import to_us
from deepserve.operator.metering.schema import SCHEMA_VERSION

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_ledger_v1 import (  # noqa: E402
    T0,
    WINDOWS,
    batches,
    exports,
    fill,
    fixture_events,
    set_prices,
)


def _golden() -> dict[str, str]:
    return {p.name[len("golden-"):-len(".txt")]: p.read_text(encoding="utf-8")
            for p in DATA.glob("golden-*.txt")}


def _restore_v1(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript((DATA / "ledger_v1.sql").read_text(encoding="utf-8"))
    conn.execute("PRAGMA user_version = 1")  # iterdump does not carry it
    conn.close()


def test_schema_1_ledger_migrates_in_place_and_exports_identical_bytes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _restore_v1(path)
    golden = _golden()
    assert len(golden) == 7
    with UsageLedger(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION == 5
        assert ledger.event_count() == len(fixture_events())
        assert exports(ledger) == golden
        again = ledger.ingest(fixture_events()[:50])  # still idempotent after the move
        assert again.accepted == [] and len(again.duplicates) == 50
    tables = {r[0] for r in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "events" not in tables and {"event_chunks", "event_ids"} <= tables
    with UsageLedger(path) as ledger:  # a second open has nothing to migrate
        assert exports(ledger) == golden


def test_new_ledger_exports_the_schema_1_bytes(tmp_path: Path) -> None:
    with UsageLedger(tmp_path / "new.db") as ledger:
        fill(ledger)
        assert exports(ledger) == _golden()


def test_json_batches_store_what_event_objects_store(tmp_path: Path) -> None:
    with UsageLedger(tmp_path / "json.db") as ledger:
        set_prices(ledger)
        for batch in batches():
            result = ledger.ingest_json(encode_batch(batch))
            assert len(result.accepted) + len(result.duplicates) == len(batch)
        assert exports(ledger) == _golden()
        again = ledger.ingest_json(encode_batch(fixture_events()))
        assert again.accepted == [] and len(again.duplicates) == len(fixture_events())


def test_events_come_back_in_end_time_then_id_order(tmp_path: Path) -> None:
    with UsageLedger(tmp_path / "l.db") as ledger:
        fill(ledger)
        rows = list(ledger.iter_events(*WINDOWS["aligned"]))
        assert len(rows) == len(fixture_events())
        assert [(r[13], r[0]) for r in rows] == sorted((r[13], r[0]) for r in rows)
        start, end = WINDOWS["unaligned"]
        part = list(ledger.iter_events(start, end, account="acme"))
        assert part and part == [r for r in rows
                                 if r[4] == "acme" and to_us(start) <= r[13] < to_us(end)]
        assert list(ledger.iter_events(T0.replace(year=2020), T0.replace(year=2021))) == []
