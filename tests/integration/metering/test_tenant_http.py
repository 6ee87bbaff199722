"""Billed to the caller, through the real billing server: the spend endpoint the gateway's
spend cap reads, and tenant-scoped exports over HTTP."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest

from deepserve.operator.metering import PriceSheet, UsageLedger

from .conftest import READ_TOKEN, T0, ServerProcess, build_event, http

pytestmark = [pytest.mark.integration]
PRICES = {"currency": "USD", "default": {"promptPerMillion": "0.30",
                                         "generatedPerMillion": "1.20", "perRequest": "0.002"}}


def _cost(events: list) -> Decimal:
    return sum((Decimal(e.prompt_tokens) * Decimal("0.3") / 10**6
                + Decimal(e.generated_tokens) * Decimal("1.2") / 10**6 + Decimal("0.002")
                for e in events), Decimal(0))


@pytest.mark.timeout(60)
def test_spend_and_tenant_exports_over_http(tmp_path: Path, server: ServerProcess) -> None:
    with UsageLedger(server.ledger) as led:  # a second connection; the server reads prices
        led.set_prices(PriceSheet.from_dict(PRICES), T0 - timedelta(days=60))
    a = [build_event(i, tenant="team a") for i in range(41)]
    b = [build_event(100 + i, tenant="team-b") for i in range(17)]
    assert server.ingest(a[:20] + b + a[20:])[0] == 200
    status, body = http(f"{server.url}/v1/tenants/{quote('team a')}/spend?month=2026-11",
                        token=READ_TOKEN)
    assert status == 200, body
    spend = json.loads(body)
    assert spend == {"tenant": "team a", "month": "2026-11", "currency": "USD",
                     "amount": spend["amount"]}
    assert isinstance(spend["amount"], str) and Decimal(spend["amount"]) == _cost(a)
    status, body = http(f"{server.url}/v1/tenants/team-b/spend?month=2026-11", token=READ_TOKEN)
    assert Decimal(json.loads(body)["amount"]) == _cost(b)
    from deepserve.operator.tenancy.spend_client import HttpSpendSource  # the gateway's client
    client = HttpSpendSource(server.url, READ_TOKEN, timeout_s=10, currency="USD")
    assert client.fetch("team a", "2026-11") == _cost(a)
    assert client.fetch("team-b", "2026-11") == _cost(b)
    status, body = http(f"{server.url}/v1/tenants/team-b/spend?month=2026-12", token=READ_TOKEN)
    assert json.loads(body)["amount"] == "0"
    status, body = http(f"{server.url}/v1/tenants/team-b/spend?month=11-2026", token=READ_TOKEN)
    assert status == 400 and json.loads(body)["field"] == "month"

    q = "from=2026-11-01&to=2026-11-02&format=focus&tenant=team-b"
    status, body = http(f"{server.url}/v1/billing/export?{q}", token=READ_TOKEN)
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert status == 200 and {r["BillingAccountId"] for r in rows} == {"team-b"}
    assert sum(Decimal(r["ConsumedQuantity"]) for r in rows
               if r["x_UsageKind"] == "requests") == len(b)
    assert sum(Decimal(r["BilledCost"]) for r in rows) == _cost(b)
    q = "from=2026-11-01&to=2026-11-02&format=cloudevents&tenant=team%20a"
    status, body = http(f"{server.url}/v1/billing/export?{q}", token=READ_TOKEN)
    lines = [json.loads(x) for x in body.decode().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(e.event_id for e in a)
    assert {x["subject"] for x in lines} == {"team a"}
