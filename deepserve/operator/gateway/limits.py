"""Per-tenant limits, exact within one gateway process (no shared store).

- Requests per minute: a sliding log of admission times; a request is admitted when fewer
  than the limit were admitted in the last 60 s, so no burst at a window edge exceeds it.
- Tokens per minute (prompt + generated): a sliding log of ``[time, tokens]`` entries. A
  request is admitted on an *estimate* (the caller's prompt size plus its ``max_tokens``)
  when the tokens already charged in the last 60 s plus the estimate fit the limit; when
  the response's real usage arrives, :meth:`TenantLimiter.settle` replaces the estimate by
  the real count in the same entry (at its admission time), so what the window holds is
  what the tenant really used.
- Concurrency: requests in flight until their response is finished.

Memory is bounded: a tenant's logs only exist for the axes its plan limits (so at most its
limits' worth of entries), and a tenant with nothing in flight and empty logs is forgotten
on the next sweep (every ``sweep_every_s``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from deepserve.operator.tenancy import TenantPlan

WINDOW_S = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused, which limit (``rpm``, ``tpm``, ``concurrency``), and the wait."""

    reason: str
    retry_after_s: int
    limit: str = "rpm"


@dataclass
class _Tenant:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)  # [admitted_at, tokens, live]
    token_sum: float = 0.0
    in_flight: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            gone = self.tokens.popleft()
            self.token_sum -= gone[1]
            gone[2] = 0.0  # out of the window: a late settle no longer moves the sum
        if not self.tokens:
            self.token_sum = 0.0  # no float drift survives an empty window

    def idle(self) -> bool:
        return not (self.requests or self.tokens or self.in_flight)


@dataclass
class Ticket:
    """One admitted request: pass it to :meth:`TenantLimiter.settle` and ``release``."""

    tenant: str
    entry: list[float] | None  # its tokens/min log entry, when the plan limits tokens
    released: bool = False


class TenantLimiter:
    """Admits or refuses requests per tenant against its plan's rpm, tpm and concurrency."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sweep_every_s: float = WINDOW_S
    ) -> None:
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._sweep_every_s = sweep_every_s
        self._last_sweep = clock()

    def admit(self, tenant: str, plan: TenantPlan, estimate: int = 0) -> Ticket | Refusal:
        """Admit one request estimated at ``estimate`` tokens, or say why not.

        An admitted request's :class:`Ticket` must be released once its response is done.
        """
        now = self._clock()
        self._maybe_sweep(now)
        state = self._tenants.get(tenant) or _Tenant()
        state.expire(now)
        refusal = self._check(state, plan, estimate, now)
        if refusal is not None:
            if not state.idle():
                self._tenants[tenant] = state
            return refusal
        self._tenants[tenant] = state
        if plan.requests_per_minute is not None:
            state.requests.append(now)
        entry = None
        if plan.tokens_per_minute is not None:
            entry = [now, float(estimate), 1.0]
            state.tokens.append(entry)
            state.token_sum += estimate
        state.in_flight += 1
        return Ticket(tenant, entry)

    @staticmethod
    def _check(state: _Tenant, plan: TenantPlan, estimate: int, now: float) -> Refusal | None:
        limit = plan.max_concurrent_requests
        if limit is not None and state.in_flight >= limit:
            return Refusal("too many concurrent requests", 1, "concurrency")
        rpm = plan.requests_per_minute
        if rpm is not None and len(state.requests) >= rpm:
            if rpm == 0:
                return Refusal("requests per minute limit is 0", int(WINDOW_S))
            oldest = state.requests[len(state.requests) - rpm]
            wait = max(1, math.ceil(oldest + WINDOW_S - now))
            return Refusal("requests per minute limit reached", wait)
        tpm = plan.tokens_per_minute
        if tpm is not None and state.token_sum + estimate > tpm:
            if estimate > tpm:
                return Refusal(
                    f"request needs about {estimate} tokens, more than the limit of "
                    f"{tpm} tokens per minute",
                    int(WINDOW_S),
                    "tpm",
                )
            wait = _token_wait(state, tpm - estimate, now)
            return Refusal("tokens per minute limit reached", wait, "tpm")
        return None

    def settle(self, ticket: Ticket, tokens: int) -> None:
        """Replace the ticket's estimate by the real token count of its response."""
        entry = ticket.entry
        if entry is None:
            return
        state = self._tenants.get(ticket.tenant)
        if state is not None and entry[2]:
            state.token_sum += tokens - entry[1]
        entry[1] = float(tokens)
        ticket.entry = None  # settled once

    def release(self, ticket: Ticket) -> None:
        """Mark the ticket's request finished (idempotent)."""
        if ticket.released:
            return
        ticket.released = True
        state = self._tenants.get(ticket.tenant)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def in_flight(self, tenant: str) -> int:
        """Requests of ``tenant`` admitted and not yet released."""
        state = self._tenants.get(tenant)
        return state.in_flight if state is not None else 0

    def tracked_tenants(self) -> int:
        """How many tenants the limiter holds state for (memory bound check)."""
        return len(self._tenants)

    def _maybe_sweep(self, now: float) -> None:
        if now - self._last_sweep < self._sweep_every_s:
            return
        self._last_sweep = now
        for name in list(self._tenants):
            state = self._tenants[name]
            state.expire(now)
            if state.idle():
                del self._tenants[name]


def _token_wait(state: _Tenant, room: float, now: float) -> int:
    """Seconds until the charged tokens drop to ``room`` as old entries leave the window."""
    total = state.token_sum
    for at, tokens, _live in state.tokens:
        total -= tokens
        if total <= room:
            return max(1, math.ceil(at + WINDOW_S - now))
    return int(WINDOW_S)


def estimate_tokens(prompt_bytes: int, max_tokens: int | None, default_max_tokens: int) -> int:
    """A request's token estimate: ~4 bytes per prompt token plus the tokens it may generate."""
    return math.ceil(prompt_bytes / 4) + (max_tokens if max_tokens is not None else default_max_tokens)
