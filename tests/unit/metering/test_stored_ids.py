"""The ledger's stored-id bookkeeping (stored_ids.py): appended recent ids, bulk merges
into the id index, and still exactly-once under merges, reopen, a second writer and a
failed transaction."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from deepserve.operator.metering import UsageLedger

from .conftest import build_event


def _id_rows(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        return (conn.execute("SELECT COUNT(*) FROM recent_ids").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM event_ids").fetchone()[0])


def test_replays_are_duplicates_across_merges_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    events = [build_event(i) for i in range(40)]
    with UsageLedger(path) as ledger:
        ledger._ids.merge_every = 7
        for i in range(0, 40, 3):
            assert len(ledger.ingest(events[i:i + 3]).accepted) == len(events[i:i + 3])
        recent, merged = _id_rows(path)
        assert recent + merged == 40 and merged > 0 and recent < 7
        # the same requests again, changed and shuffled: still the same ids, counted once
        again = [build_event(i, prompt_tokens=999) for i in range(40)]
        random.Random(1).shuffle(again)
        result = ledger.ingest(again[:20])
        assert result.accepted == [] and sorted(result.duplicates) == sorted(
            e.event_id for e in again[:20])
    with UsageLedger(path) as ledger:  # a new process reads the recent ids back
        result = ledger.ingest([*again[20:], build_event(40)])
        assert result.accepted == [build_event(40).event_id] and len(result.duplicates) == 20
        assert ledger.event_count() == 41
        usage = ledger.usage_rows(events[0].ended_at.replace(minute=0, second=0),
                                  events[-1].ended_at.replace(minute=59, second=59))
        assert sum(r.prompt_tokens for r in usage) == sum(
            e.prompt_tokens for e in [*events, build_event(40)])


def test_a_second_writer_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    events = [build_event(i) for i in range(10)]
    with UsageLedger(path) as first, UsageLedger(path) as second:
        assert len(first.ingest(events[:5]).accepted) == 5
        result = second.ingest(events)
        assert len(result.accepted) == 5 and len(result.duplicates) == 5
        assert first.ingest(events[5:]).accepted == []
        assert first.event_count() == 10


@pytest.mark.parametrize("merge_every", [1, 1000])
def test_a_failed_transaction_stores_no_ids(tmp_path: Path, merge_every: int) -> None:
    path = tmp_path / "ledger.db"
    with UsageLedger(path) as ledger:
        ledger._ids.merge_every = merge_every
        ledger.ingest([build_event(i) for i in range(3)])
        # a real SQLite failure mid-transaction, on the ledger's own connection (so the id
        # set is not simply read again, as after another connection's commit)
        ledger._conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON event_chunks "
                             "BEGIN SELECT RAISE(ABORT, 'refused'); END")
        with pytest.raises(sqlite3.IntegrityError):
            ledger.ingest([build_event(i) for i in range(2, 6)])
        ledger._conn.execute("DROP TRIGGER refuse")
        result = ledger.ingest([build_event(i) for i in range(2, 6)])
        assert [build_event(i).event_id for i in (3, 4, 5)] == result.accepted
        assert result.duplicates == [build_event(2).event_id]
        assert ledger.event_count() == 6 and sum(_id_rows(path)) == 6
