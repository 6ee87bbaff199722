"""Trusted ingest against the real billing server: the write credential is one model's and
cannot read, the read credential cannot write, events of another model are refused, and
events of unknown owners or with a skewed clock are quarantined (kept, not billed,
visible, re-billable), never dropped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deepserve.operator.metering import UsageLedger
from deepserve.operator.metering.credentials import mint_write_token

from .conftest import INGEST_KEY, READ_TOKEN, WRITE_TOKEN, ServerProcess, build_event, http

pytestmark = [pytest.mark.integration]
CSV = "/v1/billing/export?format=csv&from=2000-01-01&to=2100-01-01"


def _billed_ids(server: ServerProcess) -> list[str]:
    status, body = http(server.url + CSV, token=READ_TOKEN)
    assert status == 200
    return [line.split(",")[0] for line in body.decode().splitlines()[1:]]


@pytest.mark.timeout(60)
def test_read_and_write_credentials_are_separate(server: ServerProcess) -> None:
    events = [build_event(i) for i in range(5)]
    assert server.ingest(events, token="wrong")[0] == 401
    assert server.ingest(events, token="")[0] == 401
    assert server.ingest(events, token=WRITE_TOKEN[:-1] + "0")[0] == 401  # forged mac
    assert server.ingest(events, token=READ_TOKEN)[0] == 403  # the read token cannot write
    wildcard = mint_write_token(INGEST_KEY, "*", "*")
    assert server.ingest(events, token=wildcard)[0] == 401  # no --dev-wildcard-ingest here
    assert _billed_ids(server) == []
    for path in (CSV, "/v1/tenants/t/spend?month=2026-11", "/v1/usage/quarantine", "/metrics",
                 "/v1/billing/reconcile?from=2026-11-01&to=2026-11-02"):
        assert http(server.url + path, token=WRITE_TOKEN)[0] == 403, path
        assert http(server.url + path, token="wrong")[0] == 401, path
        assert http(server.url + path, token=READ_TOKEN)[0] == 200, path
    status, answer = server.ingest(events)
    assert status == 200 and answer["accepted"] == [e.event_id for e in events]


@pytest.mark.timeout(60)
def test_events_of_another_model_refuse_the_whole_batch(server: ServerProcess) -> None:
    mine = build_event(1)
    for field, other in (("model", build_event(2, model="other")),
                         ("namespace", build_event(3, namespace="lab"))):
        status, answer = server.ingest([mine, other])
        assert status == 403 and answer["field"] == field
        assert answer["index"] == 1 and answer["event_id"] == other.event_id
    assert _billed_ids(server) == []
    lab = mint_write_token(INGEST_KEY, "lab", "chat")
    assert server.ingest([build_event(3, namespace="lab")], token=lab)[0] == 200


@pytest.mark.timeout(60)
def test_unknown_owners_are_quarantined_then_rebilled(server: ServerProcess) -> None:
    with UsageLedger(server.ledger) as led:
        led.set_owners({("prod", "chat"): "acme"})
    good = [build_event(i) for i in range(3)]
    stolen = [build_event(10 + i, account="mallory") for i in range(4)]
    ghost_token = mint_write_token(INGEST_KEY, "prod", "ghost")
    ghost = build_event(20, model="ghost")
    status, answer = server.ingest(good + stolen)
    assert status == 200 and answer["accepted"] == [e.event_id for e in good]
    assert answer["quarantined"] == [e.event_id for e in stolen]
    status, answer = server.ingest([ghost], token=ghost_token)
    assert status == 200 and answer["quarantined"] == [ghost.event_id]
    assert server.ingest(stolen)[1]["quarantined"] == [e.event_id for e in stolen]  # one copy
    assert sorted(_billed_ids(server)) == sorted(e.event_id for e in good)
    listing = json.loads(http(server.url + "/v1/usage/quarantine", token=READ_TOKEN)[1])
    assert listing["count"] == 5
    reasons = {q["event_id"]: q["reason"] for q in listing["events"]}
    assert "'mallory' does not own prod/chat" in reasons[stolen[0].event_id]
    assert "no model prod/ghost" in reasons[ghost.event_id]
    held = {q["event_id"]: q for q in listing["events"]}
    assert held[stolen[0].event_id]["prompt_tokens"] == stolen[0].prompt_tokens
    with UsageLedger(server.ledger) as led:
        released = led.release_quarantined([stolen[0].event_id])
    assert released.accepted == [stolen[0].event_id]
    assert len(_billed_ids(server)) == 4
    assert json.loads(http(server.url + "/v1/usage/quarantine", token=READ_TOKEN)[1])[
        "count"] == 4


@pytest.mark.timeout(60)
def test_clock_skew_beyond_the_bounds_is_quarantined(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(READ_TOKEN)
    server = ServerProcess(tmp_path / "l.db", token_file, "--max-future-seconds", "300",
                           "--max-event-age-days", "30").start()
    try:
        now = datetime.now(UTC)

        def ending(i: int, at: datetime):
            return build_event(i, started_at=at - timedelta(seconds=1), ended_at=at)

        ok = [ending(0, now), ending(1, now + timedelta(seconds=120)),
              ending(2, now - timedelta(days=29))]
        future = [ending(3, now + timedelta(hours=1)), ending(4, now + timedelta(days=800))]
        old = [ending(5, now - timedelta(days=31))]
        status, answer = server.ingest(ok + future + old)
        assert status == 200 and answer["accepted"] == [e.event_id for e in ok]
        assert answer["quarantined"] == [e.event_id for e in future + old]
        assert sorted(_billed_ids(server)) == sorted(e.event_id for e in ok)
        listing = json.loads(http(server.url + "/v1/usage/quarantine", token=READ_TOKEN)[1])
        reasons = {q["event_id"]: q["reason"] for q in listing["events"]}
        assert "in the future" in reasons[future[0].event_id]
        assert "older than 30 days" in reasons[old[0].event_id]
    finally:
        server.stop()
