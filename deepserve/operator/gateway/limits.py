"""Per-tenant request limits, exact within one gateway process (no shared store).

Requests per minute use a sliding window log: a request is admitted when fewer than the
limit were admitted in the last 60 s, so no burst at a window edge can exceed the limit.
Concurrency counts requests in flight until their response is finished.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from deepserve.operator.tenancy import TenantPlan

WINDOW_S = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused and how many whole seconds to wait before retrying."""

    reason: str
    retry_after_s: int


class TenantLimiter:
    """Admits or refuses requests per tenant against its plan's requests/min and concurrency."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._admitted: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}

    def admit(self, tenant: str, plan: TenantPlan) -> Refusal | None:
        """Admit one request (returns None) or say why not; an admitted request must be released."""
        now = self._clock()
        log = self._admitted.setdefault(tenant, deque())
        while log and log[0] <= now - WINDOW_S:
            log.popleft()
        limit = plan.max_concurrent_requests
        if limit is not None and self._in_flight.get(tenant, 0) >= limit:
            return Refusal("too many concurrent requests", 1)
        if plan.requests_per_minute is not None and len(log) >= plan.requests_per_minute:
            if plan.requests_per_minute == 0:
                return Refusal("requests per minute limit is 0", int(WINDOW_S))
            oldest = log[len(log) - plan.requests_per_minute]
            wait = max(1, math.ceil(oldest + WINDOW_S - now))
            return Refusal("requests per minute limit reached", wait)
        log.append(now)
        self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1
        return None

    def release(self, tenant: str) -> None:
        """Mark one admitted request of ``tenant`` finished."""
        left = self._in_flight.get(tenant, 0) - 1
        if left > 0:
            self._in_flight[tenant] = left
        else:
            self._in_flight.pop(tenant, None)

    def in_flight(self, tenant: str) -> int:
        """Requests of ``tenant`` admitted and not yet released."""
        return self._in_flight.get(tenant, 0)
