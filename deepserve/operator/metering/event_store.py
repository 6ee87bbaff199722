"""How the ledger keeps usage events (schema 2): in chunks, plus an index of their ids.

A batch's new events are grouped by the UTC hour they ended in (runs of events more than
a minute from the rest, e.g. late ones, go to a chunk of their own); each group is one row
of ``event_chunks`` holding its events as a MessagePack array, sorted by (ended_us,
event_id), with the group's first and last end time. Every event id is also a 16-byte key of ``event_ids`` (a WITHOUT ROWID
B-tree) or, until the next merge, a row of ``recent_ids`` (stored_ids.py), which is what
makes ingestion idempotent.

Why not one SQLite row per event: each event then costs a row in the table plus entries
in two more B-trees (unique id, end time), ≈ 21 µs at ``synchronous=FULL``; a chunk row
costs ≈ 1 µs per event and the id key ≈ 9 µs (docs/metering.md has the figures).

Readers get events in (ended_us, event_id) order by merging the chunks of a window: chunks
come in order of their first end time and each is opened only when the merge reaches it,
so memory holds the chunks that overlap in time, not the window.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from datetime import datetime
from heapq import heappop, heappush, heapreplace
from operator import itemgetter
from typing import Any, Final, NamedTuple

import msgspec

from deepserve.operator.metering.base import HOUR_US, from_us
from deepserve.operator.metering.wire import Row

#: Most events in one chunk (a very large batch, e.g. a CLI import, is split).
CHUNK_EVENTS = 4096
#: A chunk is also split where consecutive end times are further apart than this, so the
#: few late events of a batch do not stretch its chunk back in time: readers hold every
#: chunk that overlaps the merge's position, and one stretched chunk per batch made a
#: CloudEvents export of 1.3M events (1 % up to an hour late) hold them all (800 MiB).
CHUNK_GAP_US = 60 * 1_000_000
#: Runs between such gaps shorter than this share one chunk per hour (the late events of a
#: batch; or all of them where a batch's events are spread thin over the hour).
CHUNK_RUN_EVENTS = 32
_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(list[Row]).decode
_ORDER = itemgetter(13, 0)  # (ended_us, event_id)
_END: Final = 13


class StoredEvent(NamedTuple):
    """One stored event as the ledger's listeners see it (the fields of :data:`Row`)."""

    event_id: str
    namespace: str
    model: str
    version: str
    account: str
    tenant: str | None
    request_id: str
    prompt_tokens: int
    generated_tokens: int
    compute_ms: float
    precision: str
    status: str
    started_us: int
    ended_us: int
    queue_ms: float | None
    ttft_ms: float | None

    @property
    def started_at(self) -> datetime:
        return from_us(self.started_us)

    @property
    def ended_at(self) -> datetime:
        return from_us(self.ended_us)

    @property
    def latency_ms(self) -> float:
        """As ``UsageEvent.latency_ms`` computes it (same float)."""
        return (self.ended_us - self.started_us) / 1_000_000 * 1000.0


#: Upsert of one ``usage_hourly`` row: (hour_us, account, namespace, model, version,
#: tenant, requests, ok, cancelled, errors, prompt_tokens, generated_tokens, compute_ms);
#: ``tenant`` is ``''`` for events without one.
USAGE_UPSERT = (
    "INSERT INTO usage_hourly VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT DO UPDATE SET requests=requests+excluded.requests, ok=ok+excluded.ok, "
    "cancelled=cancelled+excluded.cancelled, errors=errors+excluded.errors, "
    "prompt_tokens=prompt_tokens+excluded.prompt_tokens, "
    "generated_tokens=generated_tokens+excluded.generated_tokens, "
    "compute_ms=compute_ms+excluded.compute_ms"
)
_STATUS_SLOT = {"ok": 1, "cancelled": 2, "error": 3}


def hourly_rows(rows: Iterable[Row]) -> list[tuple[Any, ...]]:
    """Aggregate rows into ``usage_hourly`` rows (see :data:`USAGE_UPSERT`), per UTC hour
    of the end time, model owner's account, model version and tenant (the caller)."""
    hourly: dict[tuple[int, str, str, str, str, str], list[Any]] = {}
    slot = _STATUS_SLOT
    for r in rows:  # indexes of Row: 1-4 ns/model/version/account, 5 tenant, 7-9 usage
        end_us = r[13]
        key = (end_us - end_us % HOUR_US, r[4], r[1], r[2], r[3], r[5] or "")
        agg = hourly.get(key)
        if agg is None:
            agg = hourly[key] = [0, 0, 0, 0, 0, 0, 0.0]
        agg[0] += 1
        agg[slot[r[11]]] += 1
        agg[4] += r[7]
        agg[5] += r[8]
        agg[6] += r[9]
    return [(*k, *v) for k, v in hourly.items()]


def chunk_rows(rows: Iterable[Row], ingested_us: int) -> list[tuple[int, int, int, int, int, bytes]]:
    """Group rows into ``event_chunks`` rows: (hour_us, first_end_us, last_end_us, count,
    ingested_us, events)."""
    by_hour: dict[int, list[Row]] = {}
    for row in rows:
        end = row[_END]
        hour = end - end % HOUR_US
        group = by_hour.get(hour)
        if group is None:
            by_hour[hour] = [row]
        else:
            group.append(row)
    out = []
    gap = CHUNK_GAP_US
    for hour, group in by_hour.items():
        group.sort(key=_ORDER)
        ends = [r[_END] for r in group]
        cuts = [i for i in range(1, len(ends)) if ends[i] - ends[i - 1] > gap]
        parts: list[list[Row]] = []
        sparse: list[Row] = []  # runs too short for a chunk of their own, in order
        for lo, hi in zip([0, *cuts], [*cuts, len(group)], strict=True):
            if hi - lo < CHUNK_RUN_EVENTS:
                sparse += group[lo:hi]
            else:
                parts += [group[i:min(i + CHUNK_EVENTS, hi)]
                          for i in range(lo, hi, CHUNK_EVENTS)]
        parts += [sparse[i:i + CHUNK_EVENTS] for i in range(0, len(sparse), CHUNK_EVENTS)]
        out += [(hour, part[0][_END], part[-1][_END], len(part), ingested_us, _ENCODE(part))
                for part in parts]
    return out


def decode_chunk(blob: bytes) -> list[Row]:
    """The rows of one chunk, in (ended_us, event_id) order."""
    return _DECODE(blob)


def window_rows(rows: list[Row], first_end: int, last_end: int, start_us: int, end_us: int,
                account: str | None, tenant: str | None = None) -> list[Row]:
    """The rows of a chunk with ``start_us <= ended_us < end_us`` (and the model owner's
    account, and the tenant, where given)."""
    if first_end < start_us or last_end >= end_us:
        rows = rows[bisect_left(rows, start_us, key=itemgetter(_END)):
                    bisect_left(rows, end_us, key=itemgetter(_END))]
    if account is not None:
        rows = [r for r in rows if r[4] == account]
    if tenant is not None:
        rows = [r for r in rows if r[5] == tenant]
    return rows


def merge_chunks(chunks: Iterator[tuple[int, list[Row]]]) -> Iterator[Row]:
    """Merge sorted chunks, given as (first_end_us, rows) in order of first_end_us, into
    one (ended_us, event_id)-ordered stream. A chunk is only taken from ``chunks`` when
    the merge has reached its first end time."""
    heap: list[tuple[int, str, int, int]] = []  # (ended_us, event_id, chunk no., index)
    open_rows: dict[int, list[Row]] = {}
    pending = next(chunks, None)
    opened = 0
    while True:
        # Rows of chunks not yet opened end at or after the pending chunk's first end, so
        # the heap's top may go out while it ends before that.
        while pending is not None and (not heap or pending[0] <= heap[0][0]):
            rows = pending[1]
            if rows:
                open_rows[opened] = rows
                heappush(heap, (rows[0][_END], rows[0][0], opened, 0))
                opened += 1
            pending = next(chunks, None)
        if not heap:
            return
        _, _, no, i = heap[0]
        rows = open_rows[no]
        if len(heap) == 1:  # one chunk open: hand out its rows up to the next chunk at once
            stop = len(rows) if pending is None else bisect_left(
                rows, pending[0], lo=i, key=itemgetter(_END))
            yield from rows[i:stop]
        else:
            stop = i + 1
            yield rows[i]
        if stop < len(rows):
            nxt = rows[stop]
            heapreplace(heap, (nxt[_END], nxt[0], no, stop))
        else:
            heappop(heap)
            del open_rows[no]
