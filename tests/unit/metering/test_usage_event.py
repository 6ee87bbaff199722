"""The usage event contract the engine and the ledger share."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from deepserve.engine.usage import UsageEvent, UsageEventError, make_event_id

pytestmark = pytest.mark.unit


def test_event_id_is_deterministic_from_request(make_event) -> None:
    a, b = make_event(1), make_event(1)
    assert a.event_id == b.event_id == make_event_id("prod", "chat", "v1", "req-1")
    assert make_event(2).event_id != a.event_id


def test_wire_form_round_trips(make_event) -> None:
    event = make_event(3, tenant="team-x", ttft_ms=40.0, queue_ms=1.5, status="cancelled")
    wire = event.to_dict()
    assert wire["started_at"].endswith("Z")
    assert UsageEvent.from_dict(wire) == event


@pytest.mark.parametrize(("field", "value"), [
    ("prompt_tokens", -1), ("generated_tokens", 1.5), ("generated_tokens", True),
    ("status", "done"), ("compute_ms", float("nan")), ("account", ""), ("precision", "BF 16"),
])
def test_bad_values_are_refused_naming_the_field(make_event, field, value) -> None:
    wire = make_event(0).to_dict()
    wire[field] = value
    with pytest.raises(UsageEventError) as err:
        UsageEvent.from_dict(wire)
    assert err.value.field == field


def test_timestamps_need_an_offset_and_order(make_event) -> None:
    wire = make_event(0).to_dict()
    with pytest.raises(UsageEventError, match="ended_at"):
        UsageEvent.from_dict({**wire, "ended_at": "2026-01-01T00:00:00"})
    with pytest.raises(UsageEventError, match="ended_at: is before started_at"):
        UsageEvent.from_dict({**wire, "ended_at": "2020-01-01T00:00:00Z"})


def test_forged_or_random_event_ids_are_refused(make_event) -> None:
    wire = make_event(0).to_dict()
    with pytest.raises(UsageEventError) as err:
        UsageEvent.from_dict({**wire, "event_id": "00000000-0000-0000-0000-000000000000"})
    assert err.value.field == "event_id"


def test_unknown_and_missing_fields(make_event) -> None:
    wire = make_event(0).to_dict()
    with pytest.raises(UsageEventError, match="cost: unknown field"):
        UsageEvent.from_dict({**wire, "cost": 1})
    del wire["model"]
    with pytest.raises(UsageEventError, match="model: missing"):
        UsageEvent.from_dict(wire)


def test_latency_and_utc_normalisation(make_event) -> None:
    from datetime import timezone
    start = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    event = make_event(0, started_at=start, ended_at=start + timedelta(milliseconds=250))
    assert event.started_at.utcoffset() == timedelta(0)
    assert event.to_dict()["started_at"] == "2026-01-01T10:00:00.000000Z"
    assert event.latency_ms == pytest.approx(250.0)


def test_event_id_matches_rfc4122_uuid5() -> None:
    import uuid

    from deepserve.engine.usage import USAGE_NAMESPACE
    for rid in ("r", "req-1", "ü" * 40):
        assert make_event_id("ns", "m", "v", rid) == str(
            uuid.uuid5(USAGE_NAMESPACE, f"ns/m/v/{rid}"))


def test_cached_valid_names_do_not_leak_between_fields(make_event) -> None:
    make_event(0, model="BF16")  # a valid model name, not a valid precision tag
    with pytest.raises(UsageEventError, match="precision"):
        make_event(1, precision="BF16")
