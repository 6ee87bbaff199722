"""Tenant limits shared by every gateway replica through Redis (exact, one atomic script).

The same limits as :class:`~deepserve.operator.gateway.limits.TenantLimiter` (requests/min
sliding log, tokens/min admitted on an estimate and settled on real usage, concurrency), kept
in Redis so N gateway replicas together admit what one would. Each admission is one Lua
script (atomic on the server) using Redis's own clock (``TIME``), so replicas whose clocks
differ still share one window. Per tenant, under the hash tag ``{tenant}`` (one cluster slot):

- ``ds:lim:{t}:req`` sorted set of admitted request ids scored by admission time (ms);
- ``ds:lim:{t}:tok`` sorted set of ``<id>:<tokens>`` scored by admission time;
- ``ds:lim:{t}:sum`` the tokens charged in the window;
- ``ds:lim:{t}:run`` sorted set of requests in flight scored by admission time; an entry
  older than ``max_request_s`` counts no more, so a replica that died mid-request does not
  hold a tenant's concurrency slot for ever.

Every key gets a TTL of the window plus ``max_request_s``, so an idle tenant's state leaves
Redis by itself (memory stays bounded). When Redis cannot be reached the limiter falls back
to this process's exact local limiter and says so in the log (limits then hold per replica).
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

from deepserve.operator.gateway.limits import WINDOW_S, Refusal, TenantLimiter, Ticket
from deepserve.operator.tenancy import TenantPlan

log = logging.getLogger(__name__)

_ADMIT = """
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local est, id, window, maxreq = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
if #old > 0 then
  local drop = 0
  for _, m in ipairs(old) do drop = drop + tonumber(string.match(m, ':(-?%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  redis.call('DECRBY', KEYS[3], drop)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - maxreq)
if conc >= 0 and redis.call('ZCARD', KEYS[4]) >= conc then return {1, 1000} end
if rpm >= 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    if rpm == 0 then return {2, window} end
    local oldest = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    return {2, tonumber(oldest[2]) + window - now}
  end
end
if tpm >= 0 then
  local sum = tonumber(redis.call('GET', KEYS[3]) or '0')
  if sum + est > tpm then
    if est > tpm then return {4, window} end
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    local total = sum
    for i = 1, #entries, 2 do
      total = total - tonumber(string.match(entries[i], ':(-?%d+)$'))
      if total + est <= tpm then return {3, tonumber(entries[i + 1]) + window - now} end
    end
    return {3, window}
  end
end
local ttl = window + maxreq
if rpm >= 0 then redis.call('ZADD', KEYS[1], now, id); redis.call('PEXPIRE', KEYS[1], ttl) end
if tpm >= 0 then
  redis.call('ZADD', KEYS[2], now, id .. ':' .. est)
  redis.call('INCRBY', KEYS[3], est)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
redis.call('ZADD', KEYS[4], now, id)
redis.call('PEXPIRE', KEYS[4], ttl)
return {0, 0}
"""

_SETTLE = """
local member = ARGV[1] .. ':' .. ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], member)
if score then
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. ARGV[3])
  redis.call('INCRBY', KEYS[2], tonumber(ARGV[3]) - tonumber(ARGV[2]))
end
return 0
"""

_REASONS = {
    1: ("too many concurrent requests", "concurrency"),
    2: ("requests per minute limit reached", "rpm"),
    3: ("tokens per minute limit reached", "tpm"),
}


@dataclass
class RedisTicket(Ticket):
    """A request admitted through Redis: its id and estimate (to settle and release)."""

    request_id: str = ""
    estimate: int = 0
    tracks_tokens: bool = False


def _keys(tenant: str) -> list[str]:
    base = "ds:lim:{" + tenant + "}:"
    return [base + "req", base + "tok", base + "sum", base + "run"]


def _limit(value: int | None) -> int:
    return -1 if value is None else int(value)


class RedisLimiter:
    """Tenant limits shared through Redis (``redis://host:port/db``); async methods."""

    def __init__(self, url: str, *, max_request_s: float = 600.0, client: Any = None) -> None:
        import redis.asyncio as aioredis  # only a gateway given a Redis URL needs the client

        self._redis = client if client is not None else aioredis.Redis.from_url(url)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._max_request_ms = int(max_request_s * 1000)
        self.local = TenantLimiter()  # used while Redis cannot be reached
        self._degraded = False

    async def admit(self, tenant: str, plan: TenantPlan, estimate: int = 0) -> Ticket | Refusal:
        """Admit one request estimated at ``estimate`` tokens across every replica, or say why not."""
        request_id = uuid.uuid4().hex
        args: list[str | int] = [_limit(plan.requests_per_minute), _limit(plan.tokens_per_minute),
                _limit(plan.max_concurrent_requests), int(estimate), request_id,
                int(WINDOW_S * 1000), self._max_request_ms]
        try:
            code, wait_ms = await self._admit(keys=_keys(tenant), args=args)
        except Exception as exc:  # redis.RedisError, OSError: keep serving, per replica
            self._warn(exc)
            return self.local.admit(tenant, plan, estimate)
        self._recovered()
        if code == 0:
            return RedisTicket(tenant, None, request_id=request_id, estimate=int(estimate),
                               tracks_tokens=plan.tokens_per_minute is not None)
        if code == 4:
            return Refusal(f"request needs about {estimate} tokens, more than the limit of "
                           f"{plan.tokens_per_minute} tokens per minute", int(WINDOW_S), "tpm")
        if code == 2 and plan.requests_per_minute == 0:
            return Refusal("requests per minute limit is 0", int(WINDOW_S))
        reason, limit = _REASONS[int(code)]
        return Refusal(reason, max(1, math.ceil(int(wait_ms) / 1000)), limit)

    async def settle(self, ticket: Ticket, tokens: int) -> None:
        """Replace the ticket's estimate by the real token count, in the shared window."""
        if not isinstance(ticket, RedisTicket):
            self.local.settle(ticket, tokens)
            return
        if not ticket.tracks_tokens:
            return
        keys = _keys(ticket.tenant)
        try:
            args: list[str | int] = [ticket.request_id, ticket.estimate, int(tokens)]
            await self._settle(keys=[keys[1], keys[2]], args=args)
        except Exception as exc:
            self._warn(exc)
        ticket.tracks_tokens = False  # settled once

    async def release(self, ticket: Ticket) -> None:
        """The ticket's request is finished (idempotent)."""
        if not isinstance(ticket, RedisTicket):
            self.local.release(ticket)
            return
        if ticket.released:
            return
        ticket.released = True
        try:
            await self._redis.zrem(_keys(ticket.tenant)[3], ticket.request_id)
        except Exception as exc:
            self._warn(exc)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self._redis.aclose()

    def _warn(self, exc: Exception) -> None:
        if not self._degraded:
            log.warning("limits store unreachable (%s): limiting per gateway replica until it is back", exc)
        self._degraded = True

    def _recovered(self) -> None:
        if self._degraded:
            log.warning("limits store reachable again: limits are shared across replicas again")
        self._degraded = False
