"""The fast JSON decoder never accepts what UsageEvent.from_dict refuses, stores the same
values when it accepts, and the endpoint's errors are the slow path's, field and all."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from deepserve.engine.usage import UsageEvent, make_event_id
from deepserve.operator.metering import LedgerError, UsageLedger
from deepserve.operator.metering.ledger import _event_row
from deepserve.operator.metering.wire import _WireEvent, decode_batch, event_key, id_bytes

from .conftest import build_event

pytestmark = pytest.mark.unit

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 7, 1.5, -0.0, 0.0, 1e308, 10**12, 10**12 + 1, 2**63 - 1,
    2**63, 2**64, "", "x", "ok", "error", "cancelled", "a\n", "A" * 253, "A" * 254, "é",
    "t\u0000", "bf16", "FP8", [], {}, "NaN",
    "2026-11-01T10:00:00Z", "2026-11-01T10:00:00+02:00", "2026-11-01T10:00:00",
    "2026-11-01", "2026-11-01T10:00:00.1234567Z", "2026-11-01 10:00:00Z",
    "2026-11-01t10:00:00z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
    "2026-11-01T10:00:00.5+00:00", "2026-11-01T09:59:59Z",
]
RAW_TEXTS = ["NaN", "Infinity", "-Infinity", "1e999", "-0", "1E2", "12345678901234567890123",
             '"\\ud800"', '"\\u00e9"', "1.0", "0.1e1"]


def _slow_rows(body: bytes) -> tuple[list[Any], list[bytes]] | Exception:
    """What the endpoint stored before msgspec: json.loads, from_dict, the ledger's row."""
    try:
        events = json.loads(body)["events"]
        rows = [_event_row(UsageEvent.from_dict(d), i) for i, d in enumerate(events)]
        return rows, [id_bytes(r[0]) for r in rows]
    except Exception as err:  # anything the slow path refuses, however it refuses it
        return err


def _mutations() -> Iterator[bytes]:
    base = build_event(3, tenant="t-1", queue_ms=2.5, ttft_ms=9.0).to_dict()
    yield json.dumps({"events": [base]}).encode()
    for field in list(base):
        for value in ODD_VALUES:
            event = {**base, field: value}
            if field in ("namespace", "model", "version", "request_id"):
                with contextlib.suppress(Exception):  # keep the id right: the name rule decides
                    event["event_id"] = make_event_id(
                        event["namespace"], event["model"], event["version"], event["request_id"])
            yield json.dumps({"events": [base, event]}).encode()
        yield json.dumps({"events": [{k: v for k, v in base.items() if k != field}]}).encode()
        for text in RAW_TEXTS:
            head = json.dumps({**base, field: "@@"}).replace('"@@"', text)
            yield ('{"events": [' + head + "]}").encode()
    yield json.dumps({"events": [{**base, "extra": 1}]}).encode()
    yield json.dumps({"events": [{**base, "event_id": base["event_id"].upper()}]}).encode()
    yield ('{"events": [' + json.dumps(base)[:-1] + ', "prompt_tokens": -1}]}').encode()
    yield ('{"events": [' + json.dumps(base)[:-1] + ', "prompt_tokens": 5}]}').encode()
    yield json.dumps({"events": [base], "other": [1, 2]}).encode()
    yield b'{"events": [], "events": [' + json.dumps(base).encode() + b"]}"
    yield b"\xef\xbb\xbf" + json.dumps({"events": [base]}).encode()
    yield json.dumps({"events": [base]}).encode("utf-16")
    yield from (b"", b"[]", b"{}", b'{"events": {}}', b'{"events": null}', b"{", b"[1]",
                 b'{"events": [1]}', b'{"events": []} x', b'{"events": ["x"]}')


def test_fast_decoder_accepts_only_what_from_dict_accepts_with_the_same_values() -> None:
    accepted = refused = 0
    for body in _mutations():
        fast = decode_batch(body)
        if fast is None:
            refused += 1
            continue
        accepted += 1
        slow = _slow_rows(body)
        assert not isinstance(slow, Exception), (body, slow)
        assert fast == slow, body
        assert [type(v) for r in fast[0] for v in r] == [type(v) for r in slow[0] for v in r]
    assert accepted > 50 and refused > 300  # both sides of the rule were exercised


def test_wire_struct_matches_the_engine_event_fields() -> None:
    import dataclasses
    engine = {f.name: f.default for f in dataclasses.fields(UsageEvent)}
    wire = {f.name: f.default for f in msgspec.structs.fields(_WireEvent)}
    assert engine.keys() == wire.keys()
    for name, default in engine.items():
        assert (default is dataclasses.MISSING) == (wire[name] is msgspec.NODEFAULT), name
        if default is not dataclasses.MISSING:
            assert wire[name] == default, name


def test_event_key_is_the_engines_uuid5() -> None:
    for i in range(200):
        args = (f"ns-{i}", f"m{i % 7}", "v1", f"req/{i}@x")
        text, key = event_key(*args)
        assert text == make_event_id(*args) and key == id_bytes(text)


@pytest.mark.parametrize("body", [
    b"not json", b'{"nope": 1}', b"[]", b'{"events": {}}',
    json.dumps({"events": [build_event(0).to_dict(),
                           {**build_event(1).to_dict(), "generated_tokens": -5}]}).encode(),
    json.dumps({"events": [{**build_event(0).to_dict(), "compute_ms": 2**64}]}).encode(),
    b'{"events": [' + json.dumps(build_event(0).to_dict()).replace(
        '"compute_ms": 12.5', '"compute_ms": NaN').encode() + b"]}",
])
def test_ingest_json_raises_exactly_what_the_slow_path_raises(tmp_path, body: bytes) -> None:
    def outcome(ingest: Any) -> tuple[type, str, Any]:
        with UsageLedger(tmp_path / f"{id(ingest)}.db") as led:
            with pytest.raises(Exception) as err:
                ingest(led)
            assert led.event_count() == 0
        return type(err.value), str(err.value), getattr(err.value, "field", None)

    def slow(led: UsageLedger) -> Any:
        raw = json.loads(body)
        events = raw["events"] if isinstance(raw, dict) else None
        if not isinstance(events, list):
            raise LedgerError("events", 'body must be {"events": [...]}')
        return led.ingest_dicts(events)

    assert outcome(lambda led: led.ingest_json(body)) == outcome(slow)


def test_ingest_json_duplicates_across_batches_and_reopen(tmp_path) -> None:
    events = [build_event(i) for i in range(30)]
    path = tmp_path / "l.db"
    body = json.dumps({"events": [e.to_dict() for e in events[:20]]}).encode()
    with UsageLedger(path) as led:
        first = led.ingest_json(body)
        assert first.accepted == [e.event_id for e in events[:20]] and first.duplicates == []
        repeat = events[5].to_dict()
        second = led.ingest_json(json.dumps(
            {"events": [e.to_dict() for e in events[15:]] + [repeat]}).encode())
        assert second.accepted == [e.event_id for e in events[20:]]
        assert second.duplicates == [e.event_id for e in events[15:20]] + [events[5].event_id]
    with UsageLedger(path) as led:
        assert led.ingest_json(body).duplicates == [e.event_id for e in events[:20]]
        assert led.event_count() == 30
        hourly = led._read("SELECT SUM(requests) FROM usage_hourly")[0][0]
        assert hourly == 30


def test_wire_struct_is_built_from_the_contract_types() -> None:
    from deepserve.engine.usage import WIRE_TYPES
    fields = msgspec.structs.fields(_WireEvent)
    assert [f.name for f in fields] == list(WIRE_TYPES)
    assert [f.type for f in fields] == list(WIRE_TYPES.values())
