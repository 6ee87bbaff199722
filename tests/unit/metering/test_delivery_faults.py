"""Events duplicated, reordered and delivered an hour late are counted once, in the hour
they ended in — checked against a ground truth computed from the events themselves."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import timedelta

import pytest

from deepserve.engine.usage import encode_batch
from deepserve.operator.metering import UsageLedger

from .conftest import T0, build_event

pytestmark = pytest.mark.unit


def _truth(events: list) -> dict[tuple[int, str | None], tuple[int, int, int]]:
    out: dict[tuple[int, str | None], list[int]] = {}
    for e in events:
        acc = out.setdefault((e.ended_at.hour, e.tenant), [0, 0, 0])
        acc[0] += 1
        acc[1] += e.prompt_tokens
        acc[2] += e.generated_tokens
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def _stored(ledger: UsageLedger, start, end) -> dict[tuple[int, str | None], tuple[int, int, int]]:
    out: dict[tuple[int, str | None], list[int]] = {}
    for r in ledger.usage_rows(start, end):
        acc = out.setdefault((r.start.hour, r.tenant), [0, 0, 0])
        acc[0] += r.requests
        acc[1] += r.prompt_tokens
        acc[2] += r.generated_tokens
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def test_duplicated_reordered_and_hour_late_events_count_once_in_their_hour(ledger) -> None:
    rng = random.Random(11)
    # 600 events ending over three hours (10:00-13:00), two tenants and none
    events = [build_event(i * 18, request_id=f"f-{i}", tenant=(None, "a", "b")[i % 3],
                          prompt_tokens=rng.randrange(1, 4000),
                          generated_tokens=rng.randrange(0, 700)) for i in range(600)]
    on_time = [e for e in events if e.ended_at < T0 + timedelta(hours=2)]
    late = [e for e in events if e not in on_time]
    # on time: shuffled, in batches of varied size, each batch re-sending up to 20 earlier ones
    rng.shuffle(on_time)
    sent: list = []
    i = 0
    while i < len(on_time):
        n = rng.randrange(1, 60)
        batch = on_time[i:i + n] + rng.sample(sent, min(len(sent), rng.randrange(0, 20)))
        rng.shuffle(batch)
        result = ledger.ingest_json(encode_batch(batch))
        assert sorted(result.accepted) == sorted(e.event_id for e in on_time[i:i + n])
        sent += on_time[i:i + n]
        i += n
    # an hour late: the 12:xx events, plus a resend of everything from 10:xx, arrive at 13:30
    hour_10 = [e for e in events if e.ended_at < T0 + timedelta(hours=1)]
    delayed = late + hour_10
    rng.shuffle(delayed)
    result = ledger.ingest(delayed, now=T0 + timedelta(hours=3, minutes=30))
    assert sorted(result.accepted) == sorted(e.event_id for e in late)
    assert len(result.duplicates) == len(hour_10)
    window = (T0 - timedelta(hours=1), T0 + timedelta(hours=5))
    assert _stored(ledger, *window) == _truth(events)
    assert ledger.event_count() == len(events)
    ids = Counter(r[0] for r in ledger.iter_events(*window))
    assert len(ids) == len(events) and set(ids.values()) == {1}
    # unaligned windows (aggregated from the events) say the same for the hours they cover
    assert _stored(ledger, T0 + timedelta(seconds=1), T0 + timedelta(hours=3)) == \
        _truth([e for e in events if e.ended_at >= T0 + timedelta(seconds=1)])
    # and the same batches once more change nothing
    again = ledger.ingest_json(json.dumps({"events": [e.to_dict() for e in events]}).encode())
    assert again.accepted == [] and len(again.duplicates) == len(events)
    assert _stored(ledger, *window) == _truth(events)
