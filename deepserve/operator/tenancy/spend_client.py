"""HttpSpendSource: a tenant's month-to-date spend from the billing server, cached <= 5 s.

It is a client of ``GET /v1/tenants/<tenant>/spend?month=YYYY-MM`` (the billing server's
``metering/server.py``), answering ``{"tenant", "month", "currency", "amount"}`` with the
amount a decimal string, authenticated with ``Authorization: Bearer <read token>``.

The gateway asks on its event loop, so the common path never waits on the network: a
value younger than ``ttl_s`` is returned as is; an older one is returned while one
background fetch refreshes it (stale-while-revalidate). A tenant's first question, and
one whose value is older than ``max_stale_s`` (nobody asked for a while, or billing was
unreachable), fetch synchronously, bounded by ``timeout_s``. The cap is a promise about
money, so the source fails closed: when that fetch fails the spend reads as infinite and
capped requests get 402.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

log = logging.getLogger(__name__)
UNKNOWN_SPEND = Decimal("Infinity")  # fail closed: at or over any cap


class SpendFetchError(RuntimeError):
    """The billing server could not be asked or gave an answer we cannot trust."""


class HttpSpendSource:
    """SpendSource over the billing server's spend endpoint."""

    def __init__(self, base_url: str, token: str, *, ttl_s: float = 5.0, max_stale_s: float = 60.0,
                 timeout_s: float = 1.0, currency: str | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not 0 < ttl_s <= 5:
            raise ValueError("ttl_s: the spend cache must be 0 < ttl <= 5 seconds")
        self._base = base_url.rstrip("/")
        self._token = token
        self._ttl, self._max_stale, self._timeout = ttl_s, max_stale_s, timeout_s
        self._currency = currency
        self._now, self._mono = now, monotonic
        self._cache: dict[tuple[str, str], tuple[Decimal, float]] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spend")
        self._failing = False

    def month_to_date(self, tenant: str) -> Decimal:
        """The tenant's spend this UTC month; ``Infinity`` when it cannot be known."""
        key = (tenant, self._now().strftime("%Y-%m"))
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            return self._refresh(key)
        value, at = cached
        age = self._mono() - at
        if age >= self._max_stale:  # too old to serve: ask now, like a first question
            return self._refresh(key)
        if age >= self._ttl:
            self._refresh_in_background(key)
        return value

    def fetch(self, tenant: str, month: str) -> Decimal:
        """One request to the endpoint; raises SpendFetchError."""
        url = f"{self._base}/v1/tenants/{urllib.parse.quote(tenant, safe='')}/spend?month={month}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}",
                                                   "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise SpendFetchError(f"billing answered {e.code} for tenant {tenant}") from None
        except (OSError, ValueError) as e:
            raise SpendFetchError(f"billing unreachable: {e}") from None
        if not isinstance(doc, dict) or doc.get("tenant") != tenant or doc.get("month") != month:
            raise SpendFetchError("billing answered for another tenant or month")
        if self._currency and doc.get("currency") != self._currency:
            raise SpendFetchError(f"billing currency {doc.get('currency')} is not {self._currency}")
        try:
            amount = Decimal(str(doc["amount"]))
        except (KeyError, InvalidOperation):
            raise SpendFetchError("billing answered without a decimal amount") from None
        if not amount.is_finite() or amount < 0:
            raise SpendFetchError("billing answered a negative or non-finite amount")
        return amount

    def _refresh(self, key: tuple[str, str]) -> Decimal:
        try:
            value = self.fetch(*key)
        except SpendFetchError as e:
            if not self._failing:
                log.warning("spend of %s unknown, capped requests refused: %s", key[0], e)
            self._failing = True
            return UNKNOWN_SPEND
        if self._failing:
            log.info("spend endpoint answering again")
        self._failing = False
        with self._lock:
            self._cache[key] = (value, self._mono())
        return value

    def _refresh_in_background(self, key: tuple[str, str]) -> None:
        with self._lock:
            if key in self._in_flight:
                return
            self._in_flight.add(key)

        def run() -> None:
            try:
                self._refresh(key)
            finally:
                with self._lock:
                    self._in_flight.discard(key)

        self._pool.submit(run)

    def close(self) -> None:
        """Stop the background fetchers."""
        self._pool.shutdown(wait=False, cancel_futures=True)
