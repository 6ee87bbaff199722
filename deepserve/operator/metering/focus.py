"""FOCUS 1.2 (FinOps Open Cost and Usage Specification) CSV export and its metadata.

Spec: https://focus.finops.org/focus-specification/v1-2/ (source repository
github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec). One row per UTC hour, billing
account, model version and charge (prompt tokens, generated tokens, requests, GPU-hours
per pool). Billed to the caller: a request's token and request charges have
``BillingAccountId`` = its tenant (the gateway-authenticated caller) when it has one, else
the model owner's account; GPU-hours are always the model owner's. ``x_ModelAccount``
names the model owner on every row. All 21 columns the spec marks Mandatory are present, plus the Conditional
ones that apply to usage-based AI inference; deepserve dimensions are ``x_`` columns.
Nulls are empty unquoted fields and no value is ever an empty string (the spec's null
handling); dates are UTC ``YYYY-MM-DDTHH:MM:SSZ``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from deepserve.operator.metering.ledger import GpuRow, UsageLedger, UsageRow
from deepserve.operator.metering.pricing import PriceSheet

FOCUS_VERSION = "1.2"
MANDATORY_COLUMNS = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
)
CONDITIONAL_COLUMNS = (
    "ChargeFrequency", "ConsumedQuantity", "ConsumedUnit", "ContractedUnitPrice",
    "ListUnitPrice", "PricingCategory", "ResourceId", "ResourceName", "ResourceType",
    "ServiceSubcategory", "SkuId", "SkuPriceId", "SubAccountId", "SubAccountName",
)
CUSTOM_COLUMNS = ("x_Namespace", "x_Model", "x_ModelVersion", "x_Pool", "x_UsageKind",
                  "x_ModelAccount")
COLUMNS = MANDATORY_COLUMNS + CONDITIONAL_COLUMNS + CUSTOM_COLUMNS

_DECIMAL_COLUMNS = {"BilledCost", "ContractedCost", "EffectiveCost", "ListCost",
                    "PricingQuantity", "ConsumedQuantity", "ContractedUnitPrice", "ListUnitPrice"}
_DATETIME_COLUMNS = {"BillingPeriodEnd", "BillingPeriodStart", "ChargePeriodEnd",
                     "ChargePeriodStart"}
# The schema's creation date is part of the schema, not of the export: a constant keeps
# repeated exports byte-identical. Change it (and SCHEMA_REVISION) when COLUMNS change.
SCHEMA_REVISION = 2  # 2: x_ModelAccount (tenant billing)
SCHEMA_CREATED = "2026-12-04T00:00:00Z"
_SCALE = Decimal("0.0000000001")
_MILLION = Decimal(1_000_000)


def _fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fmt_dec(d: Decimal) -> str:
    return format(d.quantize(_SCALE).normalize(), "f")


def _csv_field(value: str | None) -> str:
    if value is None:
        return ""  # null: an empty, unquoted field
    if value == "":
        raise ValueError("FOCUS forbids empty strings; use null")
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _billing_period(t: datetime) -> tuple[datetime, datetime]:
    start = t.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else \
        start.replace(month=start.month + 1)
    return start, end


class PriceLookup:
    """Price sheet effective at a time, from the ledger's price history."""

    def __init__(self, history: Sequence[tuple[datetime, PriceSheet]]) -> None:
        self.history = list(history)

    def at(self, t: datetime) -> PriceSheet:
        """The sheet effective at ``t`` (an all-zero USD sheet if none was set yet)."""
        chosen = PriceSheet()
        for since, sheet in self.history:
            if since <= t:
                chosen = sheet
        return chosen


def focus_rows(ledger: UsageLedger, start: datetime, end: datetime,
               account: str | None = None, *, tenant: str | None = None,
               provider: str = "deepserve") -> list[dict[str, str | None]]:
    """Build FOCUS rows for the window (deterministic order and values).

    ``account`` keeps the rows of one model owner (its models' usage, whoever called, and
    its GPU-hours); ``tenant`` keeps only that caller's usage (no GPU-hours: the owner's).
    """
    prices = PriceLookup(ledger.price_history())
    names = ledger.accounts()
    out: list[tuple[tuple[Any, ...], dict[str, str | None]]] = []

    def add(row: UsageRow | GpuRow, payer: str, kind: str, qty: Decimal, unit: str,
            pricing_qty: Decimal, pricing_unit: str, unit_price: Decimal, currency: str,
            pool: str | None, sku_price: str) -> None:
        cost = pricing_qty * unit_price
        period = _billing_period(row.start)
        resource = f"{row.namespace}/{row.model}/{row.version}"
        label = kind.replace("_", " ")
        values: dict[str, str | None] = {
            "BilledCost": _fmt_dec(cost), "BillingAccountId": payer,
            "BillingAccountName": names.get(payer) or payer,
            "BillingCurrency": currency, "BillingPeriodEnd": _fmt_time(period[1]),
            "BillingPeriodStart": _fmt_time(period[0]), "ChargeCategory": "Usage",
            "ChargeClass": None,
            "ChargeDescription": f"{label} of model {resource}" + (f" in pool {pool}" if pool
                                                                   else ""),
            "ChargePeriodEnd": _fmt_time(row.end), "ChargePeriodStart": _fmt_time(row.start),
            "ContractedCost": _fmt_dec(cost), "EffectiveCost": _fmt_dec(cost),
            "InvoiceIssuerName": provider, "ListCost": _fmt_dec(cost),
            "PricingQuantity": _fmt_dec(pricing_qty), "PricingUnit": pricing_unit,
            "ProviderName": provider, "PublisherName": provider,
            "ServiceCategory": "AI and Machine Learning", "ServiceName": "deepserve inference",
            "ChargeFrequency": "Usage-Based", "ConsumedQuantity": _fmt_dec(qty),
            "ConsumedUnit": unit, "ContractedUnitPrice": _fmt_dec(unit_price),
            "ListUnitPrice": _fmt_dec(unit_price), "PricingCategory": "Standard",
            "ResourceId": resource, "ResourceName": f"{row.model} {row.version}",
            "ResourceType": "InferenceModel", "ServiceSubcategory": "Generative AI",
            "SkuId": f"deepserve-{kind.replace('_', '-')}", "SkuPriceId": sku_price,
            "SubAccountId": row.namespace, "SubAccountName": row.namespace,
            "x_Namespace": row.namespace, "x_Model": row.model, "x_ModelVersion": row.version,
            "x_Pool": pool, "x_UsageKind": kind, "x_ModelAccount": row.account,
        }
        key = (row.start, payer, row.namespace, row.model, row.version, kind, pool or "",
               row.account)
        out.append((key, values))

    for r in ledger.usage_rows(start, end, account, tenant):
        sheet = prices.at(r.start)
        payer = r.payer
        p = sheet.resolve(payer, r.namespace, r.model)
        ref = f"{sheet.currency}/{payer}/{r.namespace}/{r.model}"
        if r.prompt_tokens:
            n = Decimal(r.prompt_tokens)
            add(r, payer, "prompt_tokens", n, "Tokens", n / _MILLION, "1000000 Tokens",
                p.prompt_per_million, p.currency, None, f"{ref}/prompt")
        if r.generated_tokens:
            n = Decimal(r.generated_tokens)
            add(r, payer, "generated_tokens", n, "Tokens", n / _MILLION, "1000000 Tokens",
                p.generated_per_million, p.currency, None, f"{ref}/generated")
        n = Decimal(r.requests)
        add(r, payer, "requests", n, "Requests", n, "Requests", p.per_request, p.currency, None,
            f"{ref}/request")
    for g in [] if tenant else ledger.gpu_rows(start, end, account):
        sheet = prices.at(g.start)
        hours = (Decimal(repr(g.gpu_seconds)) / 3600).quantize(_SCALE)
        add(g, g.account, "gpu_hours", hours, "GPU-Hours", hours, "GPU-Hours",
            sheet.gpu_hour_price(g.pool), sheet.currency, g.pool,
            f"{sheet.currency}/pool/{g.pool}/gpu-hour")
    out.sort(key=lambda kv: kv[0])
    return [values for _, values in out]


def write_focus_csv(ledger: UsageLedger, start: datetime, end: datetime, out: TextIO,
                    account: str | None = None, tenant: str | None = None, *,
                    provider: str = "deepserve") -> int:
    """Write the FOCUS CSV (header + rows, ``\\n`` line ends) to ``out``; return row count."""
    rows = focus_rows(ledger, start, end, account, tenant=tenant, provider=provider)
    out.write(",".join(COLUMNS) + "\n")
    write: Callable[[str], Any] = out.write
    for row in rows:
        write(",".join(_csv_field(row[c]) for c in COLUMNS) + "\n")
    return len(rows)


def focus_metadata(*, generator: str = "deepserve") -> dict[str, Any]:
    """FOCUS metadata (data generator and schema with column definitions) as a dict."""
    columns = []
    for name in COLUMNS:
        if name in _DECIMAL_COLUMNS:
            columns.append({"ColumnName": name, "DataType": "DECIMAL", "NumberScale": 10,
                            "NumberPrecision": 38})
        elif name in _DATETIME_COLUMNS:
            columns.append({"ColumnName": name, "DataType": "DATETIME"})
        else:
            columns.append({"ColumnName": name, "DataType": "STRING", "StringMaxLength": 512,
                            "StringEncoding": "UTF-8"})
    schema_id = uuid.uuid5(uuid.NAMESPACE_URL, f"deepserve:focus:{FOCUS_VERSION}:"
                           f"{SCHEMA_REVISION}:{','.join(COLUMNS)}")
    return {
        "DataGenerator": {"DataGenerator": generator},
        "Schema": {"SchemaId": str(schema_id), "FocusVersion": FOCUS_VERSION,
                   "CreationDate": SCHEMA_CREATED, "ColumnDefinition": columns},
    }


def focus_metadata_json() -> str:
    """The metadata file's text (stable, sorted keys, trailing newline)."""
    return json.dumps(focus_metadata(), indent=2, sort_keys=True) + "\n"
