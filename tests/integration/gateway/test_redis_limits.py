"""Limits shared by two gateway replicas through a real redis-server."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from gateway_fakes import KEY_A, FakePod, MemoryKeys, client, serve

from deepserve.operator.gateway.limits import Refusal, Ticket
from deepserve.operator.gateway.redis_limits import RedisLimiter
from deepserve.operator.gateway.server import Gateway, ModelRoute
from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan

pytestmark = pytest.mark.integration
ALL = ModelSelector(allow_all=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free port (CI's .ci/run installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_replicas_share_rpm_tpm_and_concurrency_exactly(redis_url: str) -> None:
    async def body() -> None:
        one, two = RedisLimiter(redis_url), RedisLimiter(redis_url)
        try:
            rpm = TenantPlan(ALL, requests_per_minute=10)
            got = [await (one if i % 2 else two).admit("t-rpm", rpm) for i in range(15)]
            assert sum(isinstance(g, Ticket) for g in got) == 10
            refusal = got[-1]
            assert isinstance(refusal, Refusal) and refusal.limit == "rpm" and 55 <= refusal.retry_after_s <= 60

            tpm = TenantPlan(ALL, tokens_per_minute=1000)
            first = await one.admit("t-tpm", tpm, 900)
            assert isinstance(first, Ticket)
            assert isinstance(await two.admit("t-tpm", tpm, 200), Refusal)
            await one.settle(first, 100)  # it really used 100: replica two sees the room
            second = await two.admit("t-tpm", tpm, 800)
            assert isinstance(second, Ticket)
            await two.settle(second, 1200)  # an underestimate is charged in full
            late = await one.admit("t-tpm", tpm, 10)
            assert isinstance(late, Refusal) and late.limit == "tpm"
            big = await one.admit("t-tpm", tpm, 1001)
            assert isinstance(big, Refusal) and "1001 tokens" in big.reason

            conc = TenantPlan(ALL, max_concurrent_requests=1)
            held = await one.admit("t-conc", conc)
            assert isinstance(held, Ticket)
            busy = await two.admit("t-conc", conc)
            assert isinstance(busy, Refusal) and busy.limit == "concurrency"
            await one.release(held)
            await one.release(held)  # idempotent
            assert isinstance(await two.admit("t-conc", conc), Ticket)

            ttls = [await one._redis.pttl(k) for k in await one._redis.keys("ds:lim:*")]
            assert ttls and all(0 < t <= 660_000 for t in ttls)  # idle tenants leave by themselves
        finally:
            await one.close()
            await two.close()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_two_gateways_through_the_openai_client_share_one_limit(redis_url: str) -> None:
    async def body() -> None:
        pod = FakePod()
        runner, pod_url = await serve(pod.app())
        plan = TenantPlan(ALL, requests_per_minute=3)
        keys = MemoryKeys({KEY_A: Principal("tenant-a", "aaaaaaaaaaaa", plan)})
        gateways = [Gateway(keys, [ModelRoute("team", "llama", pod_url)], limiter=RedisLimiter(redis_url))
                    for _ in range(2)]
        urls = [f"http://127.0.0.1:{await gw.start()}" for gw in gateways]
        try:
            for i in range(3):
                await client(urls[i % 2]).completions.create(model="team/llama", prompt="hi")
            for url in urls:
                with pytest.raises(openai.RateLimitError) as info:
                    await client(url).completions.create(model="team/llama", prompt="hi")
                assert 1 <= int(info.value.response.headers["Retry-After"]) <= 60
        finally:
            for gw in gateways:
                await gw.stop()
            await runner.cleanup()
        assert len(pod.seen) == 3

    asyncio.run(asyncio.wait_for(body(), 30))


def test_unreachable_redis_falls_back_to_the_local_exact_limit(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        limiter = RedisLimiter(f"redis://127.0.0.1:{_free_port()}/0")
        plan = TenantPlan(ALL, requests_per_minute=2)
        got = [await limiter.admit("t", plan) for _ in range(3)]
        assert [isinstance(g, Ticket) for g in got] == [True, True, False]
        for g in got[:2]:
            assert isinstance(g, Ticket)
            await limiter.release(g)
        assert limiter.local.in_flight("t") == 0
        await limiter.close()

    asyncio.run(asyncio.wait_for(body(), 30))
    assert "limits store unreachable" in caplog.text
