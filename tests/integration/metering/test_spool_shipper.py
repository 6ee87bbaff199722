"""The engine side (spool + shipper, in its own process) against the real HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deepserve.engine.usage import UsageShipper, UsageSpool
from deepserve.operator.metering import UsageLedger

from .conftest import TOKEN, ServerProcess, build_event, http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENGINE = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime, timedelta
    from deepserve.engine.usage import UsageEvent, UsageShipper, UsageSpool
    spool = UsageSpool(sys.argv[1])
    t0 = datetime(2026, 11, 1, 10, tzinfo=UTC)
    for i in range(int(sys.argv[4])):
        status = ("ok", "cancelled", "error")[i % 3]
        spool.append(UsageEvent.create(model="chat", version="v1", namespace="prod",
            account="acme", request_id=f"e-{i}", prompt_tokens=7, generated_tokens=i % 4,
            compute_ms=2.0, precision="fp8", started_at=t0, ended_at=t0 + timedelta(seconds=1),
            status=status, tenant="t-1", ttft_ms=10.0))
    shipper = UsageShipper(spool, sys.argv[2], sys.argv[3], batch_size=64, interval_s=0.05)
    ok = shipper.flush(timeout_s=60)
    spool.close()
    sys.exit(0 if ok else 1)
""")


@pytest.mark.timeout(120)
def test_engine_process_ships_everything_once(tmp_path: Path, server: ServerProcess) -> None:
    spool_dir = tmp_path / "spool"
    endpoint = server.url + "/v1/usage/events"
    n = 500
    subprocess.run([sys.executable, "-c", ENGINE, str(spool_dir), endpoint, TOKEN, str(n)],
                   check=True, timeout=90)
    assert UsageSpool(spool_dir).pending() == []
    # the pod restarts and replays its spool (acks lost): still counted once
    replay = UsageSpool(tmp_path / "replay")
    for e in [build_event(0, request_id=f"e-{i}", prompt_tokens=7) for i in range(3)]:
        replay.append(e)
    UsageShipper(replay, endpoint, TOKEN).flush(timeout_s=10)
    status, text = http(f"{server.url}/v1/billing/export?format=cloudevents"
                        "&from=2026-11-01&to=2026-11-02&account=acme")
    events = [json.loads(line) for line in text.decode().splitlines()]
    assert status == 200 and len(events) == n
    assert sum(e["data"]["generated_tokens"] for e in events) == sum(i % 4 for i in range(n))
    assert {e["data"]["status"] for e in events} == {"ok", "cancelled", "error"}
    summary = json.loads(http(f"{server.url}/v1/models/summary?namespace=prod&model=chat")[1])
    assert "requestsPerSecond" in summary


def test_refused_event_is_quarantined_not_lost(tmp_path: Path, server: ServerProcess) -> None:
    with UsageLedger(server.ledger) as ledger:
        ledger.set_accounts({"acme": "ACME"})
    spool = UsageSpool(tmp_path / "spool")
    spool.append(build_event(1))
    spool.append(build_event(2, account="mallory"))
    spool.append(build_event(3))
    assert UsageShipper(spool, server.url + "/v1/usage/events", TOKEN).flush(timeout_s=10)
    rejected = [json.loads(x) for x in (tmp_path / "spool" / "rejected.jsonl").read_text()
                .splitlines()]
    assert [r["event"]["account"] for r in rejected] == ["mallory"]
    assert "unknown billing account" in rejected[0]["reason"]
    text = http(f"{server.url}/v1/billing/export?format=csv&from=2026-11-01&to=2026-11-02")[1]
    assert len(text.decode().splitlines()) == 1 + 2
