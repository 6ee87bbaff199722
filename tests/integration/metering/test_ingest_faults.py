"""Exactly-once under faults: kill -9 of a ledger writer, duplicate delivery, malformed
batches, and a billing server killed mid-ingest while a shipper keeps sending."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from deepserve.engine.usage import UsageShipper, UsageSpool, encode_batch
from deepserve.operator.metering import UsageLedger
from deepserve.operator.metering.base import EPOCH

from .conftest import TOKEN, ServerProcess, build_event, http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRITER = textwrap.dedent("""
    import json, sys
    from datetime import UTC, datetime, timedelta
    from deepserve.engine.usage import UsageEvent
    from deepserve.operator.metering import UsageLedger
    t0 = datetime(2026, 11, 1, 10, tzinfo=UTC)
    ledger = UsageLedger(sys.argv[1])
    i = int(sys.argv[2])
    while True:
        batch = [UsageEvent.create(model="chat", version="v1", namespace="prod",
                 account="acme", request_id=f"w-{n}", prompt_tokens=n % 7,
                 generated_tokens=1, compute_ms=1.0, precision="bf16",
                 started_at=t0 + timedelta(milliseconds=n),
                 ended_at=t0 + timedelta(milliseconds=n + 1)) for n in range(i, i + 500)]
        ledger.ingest(batch)
        print(i + 500, flush=True)   # acknowledged: everything below this number
        i += 500
""")


def _stored(led: UsageLedger) -> list[tuple]:
    return list(led.iter_events(EPOCH, EPOCH + timedelta(days=365 * 100)))


def _totals(path: Path) -> tuple[int, int, int]:
    with UsageLedger(path) as led:
        events = _stored(led)
        assert led.event_count() == len(events)
        hourly = led._read("SELECT COALESCE(SUM(requests), 0) FROM usage_hourly")[0][0]
    return len(events), sum(r[7] for r in events), hourly


@pytest.mark.timeout(120)
def test_kill9_writer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    acked = 0
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(acked)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for _ in range(3 + round_):  # let it acknowledge a few batches, then kill mid-write
            line = proc.stdout.readline()
            assert line, "writer died"
            acked = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        count, prompt, hourly = _totals(path)
        assert count >= acked  # every acknowledged event survived
        assert hourly == count  # batches are atomic: aggregates match events exactly
        assert count % 500 == 0
        acked = count  # resume after what is stored
        with UsageLedger(path) as led:
            stored = {r[6] for r in _stored(led)}
        assert stored == {f"w-{n}" for n in range(count)}
        assert prompt == sum(n % 7 for n in range(count))


def test_duplicate_delivery_and_malformed_batches(server: ServerProcess, make_event) -> None:
    url = server.url + "/v1/usage/events"
    batch = [make_event(i).to_dict() for i in range(50)]
    status, body = http(url, body={"events": batch})
    assert status == 200 and len(json.loads(body)["accepted"]) == 50
    status, body = http(url, body={"events": [*batch[10:], make_event(99).to_dict()]})
    answer = json.loads(body)
    assert (len(answer["accepted"]), len(answer["duplicates"])) == (1, 40)

    bad = {**make_event(100).to_dict(), "prompt_tokens": -1}
    status, body = http(url, body={"events": [make_event(101).to_dict(), bad]})
    err = json.loads(body)
    assert status == 400 and (err["field"], err["index"]) == ("prompt_tokens", 1)
    assert err["event_id"] == make_event(100).event_id
    assert http(url, body={"events": [make_event(102).to_dict()]}, token="wrong")[0] == 401
    assert http(url, body={"nope": []})[0] == 400
    alias = http(server.url + "/v1/usage", body={"events": [make_event(0).to_dict()]})
    assert alias[0] == 200 and json.loads(alias[1])["duplicates"] == [make_event(0).event_id]
    status, text = http(f"{server.url}/v1/billing/export?format=csv&from=2026-11-01&to=2026-11-02")
    rows = text.decode().splitlines()[1:]
    assert status == 200 and len(rows) == 51  # 101 and 102 were never written
    status, _ = http(f"{server.url}/v1/billing/export?format=csv&from=2026-11-02&to=2026-11-01")
    assert status == 400
    assert http(f"{server.url}/healthz", token=None)[0] == 200
    assert http(f"{server.url}/metrics", token=None)[0] == 401
    metrics = http(f"{server.url}/metrics")[1].decode()
    assert "deepserve_usage_events_ingested_total 51.0" in metrics
    assert "deepserve_usage_events_duplicate_total 41.0" in metrics


@pytest.mark.timeout(180)
def test_server_killed_mid_ingest_then_restarted(tmp_path: Path, server: ServerProcess) -> None:
    spool = UsageSpool(tmp_path / "spool")
    n = 3000
    for i in range(n):
        spool.append(build_event(i, generated_tokens=i % 5))
    shipper = UsageShipper(spool, server.url + "/v1/usage/events", TOKEN, batch_size=100,
                           interval_s=0.05, max_backoff_s=0.2, timeout_s=5)
    shipper.start()
    try:
        while len(spool.pending()) > n - 1000:  # some batches are in, others not yet
            time.sleep(0.01)
        server.kill()  # the operator dies mid-stream
        time.sleep(0.3)
        server.start(port=server.port)  # restarted on the same ledger and port
        deadline = time.monotonic() + 90
        while spool.pending(limit=1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spool.pending() == []
    finally:
        shipper.stop(flush_timeout=0)
    status, text = http(f"{server.url}/v1/billing/export?format=csv&from=2026-11-01&to=2026-11-02")
    lines = text.decode().splitlines()[1:]
    assert status == 200 and len(lines) == n  # exactly once
    assert len({line.split(",")[0] for line in lines}) == n
    assert sum(int(line.split(",")[12]) for line in lines) == sum(i % 5 for i in range(n))


def test_http_export_equals_cli_export_byte_for_byte(tmp_path: Path, server: ServerProcess,
                                                     make_event) -> None:
    status, _ = http(server.url + "/v1/usage/events",
                     body={"events": [make_event(i).to_dict() for i in range(20)]})
    assert status == 200
    for fmt in ("focus", "cloudevents", "csv"):
        q = f"format={fmt}&from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z"
        first = http(f"{server.url}/v1/billing/export?{q}")[1]
        assert first == http(f"{server.url}/v1/billing/export?{q}")[1]
        out = tmp_path / f"x.{fmt}"
        subprocess.run([str(Path(sys.executable).with_name("deepserve")), "billing", "export",
                        "--ledger", str(server.ledger), "--from", "2026-11-01", "--to",
                        "2026-11-02", "--format", fmt, "-o", str(out)], check=True)
        assert out.read_bytes() == first
    meta = http(f"{server.url}/v1/billing/export?format=focus-metadata")[1]
    assert meta == (tmp_path / "x.focus.metadata.json").read_bytes()
    assert encode_batch([make_event(0)]).startswith(b'{"events":[')
