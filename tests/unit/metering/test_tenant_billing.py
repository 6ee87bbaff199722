"""Billed to the caller: N requests of tenant A and M of tenant B give FOCUS rows, CloudEvents
and spend that match both exactly; the model owner still pays its GPU-hours; a tenant's
export holds only its own usage."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from deepserve.operator.metering import LedgerError, PodSnapshot, PriceSheet, UsageLedger, export
from deepserve.operator.metering.spend import month_window, tenant_spend

from .conftest import T0, build_event

pytestmark = pytest.mark.unit
WINDOW = (T0 - timedelta(hours=10), T0 + timedelta(hours=14))
PRICES = {"currency": "EUR", "gpuHour": {"h100": "2.50"},
          "default": {"promptPerMillion": "0.50", "generatedPerMillion": "1.50",
                      "perRequest": "0.0001"},
          "accounts": {"tenant-b": {"perRequest": "0.001"}}}
N, M, K = 37, 23, 11  # tenant A, tenant B, no tenant (billed to the model owner)


def _events() -> list:
    rng = random.Random(7)
    out = []
    for i in range(N + M + K):
        tenant = "tenant-a" if i < N else "tenant-b" if i < N + M else None
        model, account = ("chat", "acme") if i % 3 else ("embed", "globex")
        out.append(build_event(
            i * 150, request_id=f"q-{i}", tenant=tenant, model=model, account=account,
            prompt_tokens=rng.randrange(0, 5000), generated_tokens=rng.randrange(0, 900)))
    return out


@pytest.fixture
def billed(tmp_path: Path) -> tuple[UsageLedger, list]:
    ledger = UsageLedger(tmp_path / "l.db")
    ledger.set_prices(PriceSheet.from_dict(PRICES), T0 - timedelta(days=30))
    events = _events()
    shuffled = events[:]
    random.Random(3).shuffle(shuffled)
    for i in range(0, len(shuffled), 9):
        ledger.ingest(shuffled[i:i + 9])
    pod = dict(uid="u", name="p", namespace="prod", model="chat", version="v1",
               account="acme", pool="h100", gpus=2, ready=True,
               ready_changed_at=T0 - timedelta(minutes=30))
    ledger.observe_pods([PodSnapshot(observed_at=T0, **pod),
                         PodSnapshot(observed_at=T0 + timedelta(minutes=30), **pod)])
    yield ledger, events
    ledger.close()


def _focus(ledger: UsageLedger, window=WINDOW, **scope: str) -> list[dict[str, str]]:
    buf = io.StringIO()
    export(ledger, "focus", *window, buf, scope.get("account"), scope.get("tenant"))
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


def _expected_cost(events: list, per_request: str) -> Decimal:
    return sum((Decimal(e.prompt_tokens) * Decimal("0.5") / 10**6
                + Decimal(e.generated_tokens) * Decimal("1.5") / 10**6 + Decimal(per_request)
                for e in events), Decimal(0))


def _totals(rows: list[dict[str, str]], payer: str) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for r in rows:
        if r["BillingAccountId"] == payer:
            kind = r["x_UsageKind"]
            out[kind] = out.get(kind, Decimal(0)) + Decimal(r["ConsumedQuantity"])
            out["cost"] = out.get("cost", Decimal(0)) + Decimal(r["BilledCost"])
    return out


def test_each_tenant_is_billed_exactly_its_own_requests_and_the_owner_its_gpu_hours(
        billed) -> None:
    ledger, events = billed
    rows = _focus(ledger)
    a, b, own = events[:N], events[N:N + M], events[N + M:]
    assert {r["BillingAccountId"] for r in rows} == {"tenant-a", "tenant-b", "acme", "globex"}
    for payer, mine, per_request in (("tenant-a", a, "0.0001"), ("tenant-b", b, "0.001")):
        t = _totals(rows, payer)
        assert t["requests"] == len(mine)
        assert t["prompt_tokens"] == sum(e.prompt_tokens for e in mine)
        assert t.get("generated_tokens", 0) == sum(e.generated_tokens for e in mine)
        assert "gpu_hours" not in t
        assert t["cost"] == _expected_cost(mine, per_request)
    owners = _totals(rows, "acme")
    assert owners["requests"] == sum(1 for e in own if e.account == "acme")
    assert owners["gpu_hours"] == 2  # 2 GPUs for one hour, the owner's alone
    assert sum(_totals(rows, p)["requests"] for p in ("tenant-a", "tenant-b", "acme",
                                                        "globex")) == N + M + K
    by_owner = {r["x_ModelAccount"] for r in rows if r["BillingAccountId"] == "tenant-a"}
    assert by_owner == {"acme", "globex"}  # A called models of both owners


def test_tenant_scoped_exports_hold_only_that_tenants_usage(billed) -> None:
    ledger, events = billed
    a = events[:N]
    rows = _focus(ledger, tenant="tenant-a")
    assert rows and {r["BillingAccountId"] for r in rows} == {"tenant-a"}
    assert _totals(rows, "tenant-a") == _totals(_focus(ledger), "tenant-a")
    buf = io.StringIO()
    export(ledger, "cloudevents", *WINDOW, buf, tenant="tenant-a")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(e.event_id for e in a)
    assert {x["subject"] for x in lines} == {"tenant-a"}
    buf = io.StringIO()
    export(ledger, "csv", *WINDOW, buf, tenant="tenant-b")
    assert sorted(r["event_id"] for r in csv.DictReader(io.StringIO(buf.getvalue()))) == sorted(
        e.event_id for e in events[N:N + M])
    assert _focus(ledger, tenant="nobody") == []


def test_unaligned_windows_bill_tenants_as_the_events_say(billed) -> None:
    ledger, events = billed
    window = (T0 + timedelta(minutes=7), T0 + timedelta(hours=2, minutes=5))
    lo, hi = window
    mine = [e for e in events[:N] if lo <= e.ended_at < hi]
    t = _totals(_focus(ledger, window, tenant="tenant-a"), "tenant-a")
    assert 0 < len(mine) < N
    assert t["requests"] == len(mine)
    assert t["prompt_tokens"] == sum(e.prompt_tokens for e in mine)


def test_spend_is_the_tenants_focus_cost_for_the_month(billed) -> None:
    ledger, events = billed
    spend = tenant_spend(ledger, "tenant-b", "2026-11")
    assert spend.amount == _expected_cost(events[N:N + M], "0.001") and spend.currency == "EUR"
    assert Decimal(spend.to_dict()["amount"]) == spend.amount
    assert tenant_spend(ledger, "tenant-b", "2026-10").to_dict() == {
        "tenant": "tenant-b", "month": "2026-10", "currency": "EUR", "amount": "0"}
    assert month_window("2026-12")[1].year == 2027
    for bad in ("2026-13", "26-11", "2026-1", ""):
        with pytest.raises(LedgerError) as err:
            tenant_spend(ledger, "tenant-b", bad)
        assert err.value.field == "month"
    with pytest.raises(LedgerError) as err:
        tenant_spend(ledger, "x" * 129, "2026-11")
    assert err.value.field == "tenant"
