"""The pod-local spool: nothing appended is lost until acked; acked is never resent."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from deepserve.engine.usage import UsageSpool

pytestmark = pytest.mark.unit


def test_append_pending_ack_compact(tmp_path: Path, make_event) -> None:
    spool = UsageSpool(tmp_path)
    events = [make_event(i) for i in range(5)]
    for e in events:
        spool.append(e)
    assert [e.event_id for e in spool.pending()] == [e.event_id for e in events]
    assert len(spool.pending(limit=2)) == 2
    spool.ack([events[0].event_id, events[1].event_id])
    assert [e.event_id for e in spool.pending()] == [e.event_id for e in events[2:]]
    assert spool.compact() == 0  # the active segment is never removed
    spool.close()
    spool.ack(e.event_id for e in events[2:])
    assert spool.compact() == 1
    assert spool.pending() == []
    assert list(tmp_path.glob("seg-*")) == []


def test_pending_survives_reopen_and_torn_last_line(tmp_path: Path, make_event) -> None:
    spool = UsageSpool(tmp_path)
    spool.append(make_event(1))
    spool.append(make_event(2))
    segment = next(tmp_path.glob("seg-*.active.jsonl"))
    with open(segment, "ab") as fh:  # a crash in the middle of a third append
        fh.write(b'{"event_id": "abc", "mod')
    spool._fh.close()  # simulate the writer dying: its lock goes away, no seal
    reopened = UsageSpool(tmp_path)
    assert [e.request_id for e in reopened.pending()] == ["req-1", "req-2"]
    sealed = next(tmp_path.glob("seg-*.jsonl"))
    assert ".active" not in sealed.name and sealed.read_bytes().endswith(b"\n")


def test_live_writer_segment_is_not_sealed_by_another_process(tmp_path: Path, make_event) -> None:
    writer = UsageSpool(tmp_path)
    writer.append(make_event(1))
    other = UsageSpool(tmp_path)  # e.g. a second Triton model instance
    other.append(make_event(2))
    active = sorted(tmp_path.glob("seg-*.active.jsonl"))
    assert len(active) == 2
    assert {e.request_id for e in other.pending()} == {"req-1", "req-2"}
    with open(active[0], "rb") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_rotation_and_quarantine(tmp_path: Path, make_event) -> None:
    spool = UsageSpool(tmp_path, segment_bytes=200)
    for i in range(4):
        spool.append(make_event(i))
    assert len(list(tmp_path.glob("seg-*.jsonl"))) == 4
    bad = spool.pending()[0]
    spool.quarantine(bad, "unknown account")
    assert bad.event_id not in {e.event_id for e in spool.pending()}
    record = json.loads((tmp_path / "rejected.jsonl").read_text())
    assert record["event"]["event_id"] == bad.event_id and record["reason"] == "unknown account"
