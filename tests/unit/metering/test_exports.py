"""FOCUS 1.2, CloudEvents and CSV exports: complete, exact, reproducible."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from deepserve.operator.metering import (
    LedgerError,
    PodSnapshot,
    PriceSheet,
    export,
    export_to_file,
    focus_metadata,
)
from deepserve.operator.metering.focus import COLUMNS, MANDATORY_COLUMNS

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
DAY = (T0 - timedelta(hours=10), T0 + timedelta(hours=14))
PRICES = {"currency": "USD", "gpuHour": {"h100": "2.50"},
          "default": {"promptPerMillion": "0.50", "generatedPerMillion": "1.50",
                      "perRequest": "0.0001"}}


@pytest.fixture
def filled(ledger, make_event):
    ledger.set_prices(PriceSheet.from_dict(PRICES), T0 - timedelta(days=30))
    ledger.ingest([make_event(i) for i in range(100)]
                  + [make_event(200, account="globex", tenant="t,1")])
    pod = dict(uid="u", name="p", namespace="prod", model="chat", version="v1",
               account="acme", pool="h100", gpus=2, ready=True,
               ready_changed_at=T0 - timedelta(minutes=30))
    ledger.observe_pods([PodSnapshot(observed_at=T0, **pod),
                         PodSnapshot(observed_at=T0 + timedelta(minutes=30), **pod)])
    return ledger


def _export(ledger, fmt: str, account: str | None = None) -> str:
    buf = io.StringIO()
    export(ledger, fmt, *DAY, buf, account)
    return buf.getvalue()


def test_focus_has_every_mandatory_column_and_exact_costs(filled, make_event) -> None:
    text = _export(filled, "focus")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert set(MANDATORY_COLUMNS) <= set(rows[0]) and len(MANDATORY_COLUMNS) == 21
    assert [c for c in rows[0] if c[0].islower()] == [c for c in rows[0] if c.startswith("x_")]
    acme = {r["x_UsageKind"]: r for r in rows if r["BillingAccountId"] == "acme"}
    prompt = sum(make_event(i).prompt_tokens for i in range(100))
    assert acme["prompt_tokens"]["ConsumedQuantity"] == str(prompt)
    assert acme["prompt_tokens"]["ConsumedUnit"] == "Tokens"
    assert Decimal(acme["prompt_tokens"]["BilledCost"]) == Decimal(prompt) * Decimal("0.5") / 10**6
    assert acme["requests"]["ConsumedQuantity"] == "100"
    assert Decimal(acme["requests"]["BilledCost"]) == Decimal("0.01")
    assert acme["gpu_hours"]["ConsumedUnit"] == "GPU-Hours"
    gpu = [r for r in rows if r["x_UsageKind"] == "gpu_hours"]
    assert [r["ChargePeriodStart"][11:16] for r in gpu] == ["09:00", "10:00"]
    assert sum(Decimal(r["ConsumedQuantity"]) for r in gpu) == 2  # 2 GPUs × 1 h (09:30-10:30)
    assert sum(Decimal(r["BilledCost"]) for r in gpu) == Decimal("5")
    assert {r["x_Pool"] for r in gpu} == {"h100"}
    assert {r["ServiceCategory"] for r in rows} == {"AI and Machine Learning"}
    r = acme["requests"]
    assert (r["ChargePeriodStart"], r["ChargePeriodEnd"]) == ("2026-11-01T10:00:00Z",
                                                              "2026-11-01T11:00:00Z")
    assert (r["BillingPeriodStart"], r["BillingPeriodEnd"]) == ("2026-11-01T00:00:00Z",
                                                                "2026-12-01T00:00:00Z")


def test_focus_nulls_are_empty_fields_never_empty_strings(filled) -> None:
    text = _export(filled, "focus")
    assert '""' not in text
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["ChargeClass"] == ""  # null
    assert ",," in text


def test_repeated_exports_are_byte_identical(filled) -> None:
    for fmt in ("focus", "cloudevents", "csv"):
        assert _export(filled, fmt) == _export(filled, fmt)


def test_account_filter_keeps_one_model_owner_whoever_called(filled) -> None:
    rows = list(csv.DictReader(io.StringIO(_export(filled, "focus", "globex"))))
    assert {r["x_ModelAccount"] for r in rows} == {"globex"}
    assert {r["BillingAccountId"] for r in rows} == {"t,1"}  # its caller pays the tokens
    assert {r["x_UsageKind"] for r in rows} == {"prompt_tokens", "generated_tokens", "requests"}


def test_cloudevents_are_openmeter_shaped(filled, make_event) -> None:
    lines = [json.loads(x) for x in _export(filled, "cloudevents").splitlines()]
    usage = [e for e in lines if e["type"] == "io.deepserve.inference.usage"]
    assert len(usage) == 101 and len({e["id"] for e in usage}) == 101
    first = usage[0]
    assert first["specversion"] == "1.0" and first["subject"] == "acme"
    assert first["id"] == make_event(0).event_id
    assert first["data"]["prompt_tokens"] == make_event(0).prompt_tokens
    assert first["data"]["tenant"] is None and first["data"]["account"] == "acme"
    assert usage[-1]["subject"] == "t,1" and usage[-1]["data"]["account"] == "globex"
    gpu = [e for e in lines if e["type"] == "io.deepserve.gpu.usage"]
    assert sum(e["data"]["gpu_seconds"] for e in gpu) == 2 * 3600


def test_csv_quotes_and_nulls(filled) -> None:
    rows = list(csv.DictReader(io.StringIO(_export(filled, "csv"))))
    assert len(rows) == 101
    assert rows[-1]["tenant"] == "t,1" and rows[0]["tenant"] == "" and rows[0]["ttft_ms"] == ""


def test_export_to_file_is_atomic_and_writes_metadata(filled, tmp_path: Path) -> None:
    out = tmp_path / "bill.csv"
    n = export_to_file(filled, "focus", *DAY, out)
    assert n > 0 and out.read_text().startswith("BilledCost,")
    meta = json.loads((tmp_path / "bill.csv.metadata.json").read_text())
    assert meta["Schema"]["FocusVersion"] == "1.2"
    assert [c["ColumnName"] for c in meta["Schema"]["ColumnDefinition"]] == list(COLUMNS)
    assert focus_metadata() == meta
    with pytest.raises(LedgerError, match="to: must be after from"):
        export_to_file(filled, "csv", DAY[1], DAY[0], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="format"):
        export_to_file(filled, "xml", *DAY, tmp_path / "y.csv")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ledger.db"
                  and not p.name.startswith("ledger.db")) == ["bill.csv", "bill.csv.metadata.json"]


def test_prices_effective_at_the_time_of_use(filled, make_event) -> None:
    filled.set_prices(PriceSheet.from_dict({**PRICES, "default": {"perRequest": "1"}}),
                      T0 + timedelta(hours=5))
    filled.ingest([make_event(6 * 3600 + 1)])
    rows = [r for r in csv.DictReader(io.StringIO(_export(filled, "focus")))
            if r["x_UsageKind"] == "requests" and r["BillingAccountId"] == "acme"]
    assert [(r["ChargePeriodStart"][11:13], r["BilledCost"]) for r in rows] == [
        ("10", "0.01"), ("16", "1")]
