"""Chunks of the event store: a batch's late events get chunks of their own, so a chunk
spans its batch's time, and readers still get every event in (end time, id) order."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from deepserve.operator.metering import UsageLedger
from deepserve.operator.metering.event_store import CHUNK_GAP_US

from .conftest import T0, build_event


def test_late_events_do_not_stretch_their_batch_chunk(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    batches = []
    for b in range(3):  # 50 events a second apart at 10:20, 10:30, 10:40; 2 late ones each
        batch = [build_event(1200 + 600 * b + i) for i in range(50)]
        batch += [build_event(10_000 + 10 * b + j, started_at=T0 + timedelta(seconds=j))
                  for j in range(2)]
        batches.append(batch)
    with UsageLedger(path) as ledger:
        for batch in batches:
            assert len(ledger.ingest(batch).accepted) == 52
        stored = list(ledger.iter_events(T0, T0 + timedelta(hours=1)))
    every = [e for batch in batches for e in batch]
    assert [r[0] for r in stored] == [
        e.event_id for e in sorted(every, key=lambda e: (e.ended_at, e.event_id))]
    assert len(stored) == len({r[0] for r in stored}) == 156
    with sqlite3.connect(path) as conn:
        spans = conn.execute("SELECT last_end_us - first_end_us, count FROM event_chunks "
                             "ORDER BY chunk").fetchall()
    assert len(spans) == 6  # per batch: the 50 on time, the 2 late ones (1 s apart)
    assert all(span <= max(49_000_000, CHUNK_GAP_US) for span, _ in spans)
    assert sorted(count for _, count in spans) == [2, 2, 2, 50, 50, 50]


def test_events_spread_thin_share_one_chunk_per_hour(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    events = [build_event(100 * i) for i in range(30)]  # 100 s apart, within 10:00-11:00
    with UsageLedger(path) as ledger:
        assert len(ledger.ingest(events).accepted) == 30
        stored = [r[0] for r in ledger.iter_events(T0, T0 + timedelta(hours=1))]
    assert stored == [e.event_id for e in sorted(events, key=lambda e: (e.ended_at, e.event_id))]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count FROM event_chunks").fetchall() == [(30,)]
