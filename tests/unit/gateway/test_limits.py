"""The tenant limiter on a fake clock: tokens/min accuracy under over-limit load, eviction."""

from __future__ import annotations

import heapq
import random

import pytest

from deepserve.operator.gateway.limits import (
    WINDOW_S,
    Refusal,
    TenantLimiter,
    Ticket,
    estimate_tokens,
)
from deepserve.operator.tenancy import ModelSelector, TenantPlan

pytestmark = pytest.mark.unit
ALL = ModelSelector(allow_all=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_admitted_tokens_per_minute_stay_within_2_percent_of_limit_at_5x_load() -> None:
    """Requests offered at 5x the limit; what is admitted (real usage) is the limit +-2%."""
    limit = 100_000
    plan = TenantPlan(ALL, tokens_per_minute=limit)
    clock = Clock()
    limiter = TenantLimiter(clock)
    rng = random.Random(7)
    start = clock.now
    mean_real = 1200 / 4.3 + 128.5
    gap = WINDOW_S / (5 * limit / mean_real)  # arrivals at 5x the limit (real tokens)
    done: list[tuple[float, int, Ticket, int]] = []  # (finish time, seq, ticket, real tokens)
    admitted: list[tuple[float, int]] = []  # (admission time, real tokens)
    refused = offered = seq = 0
    t = start
    while t < start + 600:
        clock.now = t
        while done and done[0][0] <= t:
            _, _, ticket, real = heapq.heappop(done)
            limiter.settle(ticket, real)
            limiter.release(ticket)
        prompt_bytes = rng.randint(400, 2000)
        real_tokens = round(prompt_bytes / 4.3) + rng.randint(1, 256)  # a real tokenizer differs
        offered += real_tokens
        got = limiter.admit("t", plan, estimate_tokens(prompt_bytes, 256, 256))
        if isinstance(got, Refusal):
            refused += 1
            assert got.limit == "tpm" and 1 <= got.retry_after_s <= 60
        else:
            admitted.append((t, real_tokens))
            seq += 1
            heapq.heappush(done, (t + rng.uniform(0.2, 1.5), seq, got, real_tokens))
        t += rng.expovariate(1 / gap)
    assert 4.7 * limit * 10 <= offered <= 5.3 * limit * 10  # 5x the limit for 10 minutes
    assert refused > 3 * len(admitted)
    # each of the 10 minutes: real tokens admitted within 2% of the limit
    minutes = [
        sum(n for at, n in admitted if start + 60 * k <= at < start + 60 * (k + 1))
        for k in range(10)
    ]
    assert all(limit * 0.98 <= m <= limit * 1.02 for m in minutes), minutes
    # and no sliding minute (5 s steps) goes over it by more than 2% either
    sliding = [
        sum(n for at, n in admitted if start + w <= at < start + w + WINDOW_S)
        for w in range(0, 540, 5)
    ]
    assert max(sliding) <= limit * 1.02, max(sliding)


def test_settle_frees_the_overestimate_and_charges_an_underestimate() -> None:
    clock = Clock()
    limiter = TenantLimiter(clock)
    plan = TenantPlan(ALL, tokens_per_minute=1000)
    first = limiter.admit("t", plan, 900)
    assert isinstance(first, Ticket)
    assert isinstance(limiter.admit("t", plan, 200), Refusal)
    limiter.settle(first, 100)  # it really used 100
    limiter.release(first)
    second = limiter.admit("t", plan, 800)
    assert isinstance(second, Ticket)
    limiter.settle(second, 1200)  # it really used more than estimated: charged in full
    refusal = limiter.admit("t", plan, 10)
    assert isinstance(refusal, Refusal) and refusal.limit == "tpm"
    clock.now += 30
    assert limiter.admit("t", plan, 10) == refusal.__class__(refusal.reason, 30, "tpm")
    clock.now += 30
    assert isinstance(limiter.admit("t", plan, 10), Ticket)  # the window moved past both


def test_a_request_larger_than_the_limit_is_refused_naming_its_size() -> None:
    limiter = TenantLimiter(Clock())
    refusal = limiter.admit("t", TenantPlan(ALL, tokens_per_minute=100), 101)
    assert isinstance(refusal, Refusal) and "101 tokens" in refusal.reason


def test_idle_tenants_are_forgotten() -> None:
    clock = Clock()
    limiter = TenantLimiter(clock, sweep_every_s=10)
    plan = TenantPlan(ALL, requests_per_minute=5, tokens_per_minute=10_000)
    busy = limiter.admit("busy", plan, 10)
    for i in range(5000):
        ticket = limiter.admit(f"tenant-{i}", plan, 10)
        assert isinstance(ticket, Ticket)
        limiter.settle(ticket, 5)
        limiter.release(ticket)
    assert limiter.tracked_tenants() == 5001
    clock.now += WINDOW_S + 1
    limiter.admit("another", TenantPlan(ALL), 0)  # triggers the sweep
    assert limiter.tracked_tenants() == 2  # the one still in flight, and the new one
    assert isinstance(busy, Ticket) and limiter.in_flight("busy") == 1
    limiter.release(busy)
    limiter.release(busy)  # idempotent
    assert limiter.in_flight("busy") == 0


def test_unlimited_plan_keeps_no_log() -> None:
    limiter = TenantLimiter(Clock())
    for _ in range(1000):
        ticket = limiter.admit("t", TenantPlan(ALL), 50)
        assert isinstance(ticket, Ticket) and ticket.entry is None
        limiter.release(ticket)
    assert limiter.tracked_tenants() == 1 and limiter._tenants["t"].idle()
