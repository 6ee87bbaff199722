"""A tenant's month-to-date spend, for the gateway's monthly spend cap.

The spend is the sum of the ``BilledCost`` of the tenant's FOCUS rows for the calendar
month (UTC): its prompt and generated tokens and requests, priced with the price book in
effect at the time of use — exactly what its FOCUS export bills. GPU-hours are the model
owner's and never part of a tenant's spend. Served as
``GET /v1/tenants/<tenant>/spend?month=YYYY-MM`` (server.py).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from decimal import Decimal

from deepserve.engine.usage import tenant_ok
from deepserve.operator.metering.base import LedgerError
from deepserve.operator.metering.focus import PriceLookup, focus_rows
from deepserve.operator.metering.ledger import UsageLedger

_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


@dataclasses.dataclass(frozen=True)
class Spend:
    """What one tenant was billed in one month, in one currency."""

    tenant: str
    month: str
    currency: str
    amount: Decimal

    def to_dict(self) -> dict[str, str]:
        """The endpoint's JSON: the amount as a decimal string (exact, no float)."""
        return {"tenant": self.tenant, "month": self.month, "currency": self.currency,
                "amount": format(self.amount.normalize(), "f") if self.amount else "0"}


def month_window(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` -> [first instant of the month, first of the next) in UTC.

    Raises LedgerError naming ``month`` otherwise.
    """
    match = _MONTH_RE.match(month or "")
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise LedgerError("month", f"must be YYYY-MM (1970 or later), got {month!r}")
    year, mon = int(match.group(1)), int(match.group(2))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) if mon == 12 else datetime(year, mon + 1, 1,
                                                                         tzinfo=UTC)
    return start, end


def tenant_spend(ledger: UsageLedger, tenant: str, month: str) -> Spend:
    """The tenant's spend in ``month`` (``YYYY-MM``). Raises LedgerError naming ``tenant``
    or ``month`` for bad input, or ``currency`` if the month's prices changed currency."""
    if not tenant or not tenant_ok(tenant):
        raise LedgerError("tenant", "must be 1..128 printable characters")
    start, end = month_window(month)
    total = Decimal(0)
    currencies: set[str] = set()
    for row in focus_rows(ledger, start, end, tenant=tenant):
        total += Decimal(str(row["BilledCost"]))
        currencies.add(str(row["BillingCurrency"]))
    if len(currencies) > 1:
        raise LedgerError("currency", f"{month} was billed in {', '.join(sorted(currencies))}")
    currency = currencies.pop() if currencies else \
        PriceLookup(ledger.price_history()).at(min(end, datetime.now(UTC))).currency
    return Spend(tenant, month, currency, total)
