"""The gateway with the real ``openai`` client in front and a fake pod (aiohttp) behind it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from gateway_fakes import KEY_A, KEY_B, FakePod, MemoryKeys, client
from gateway_fakes import serve as _serve

from deepserve.engine.openai_api import MAX_BODY_BYTES
from deepserve.operator.gateway.server import Gateway, ModelRoute
from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan


@asynccontextmanager
async def running(plan_a: TenantPlan, pod: FakePod) -> AsyncIterator[str]:
    pod_runner, pod_url = await _serve(pod.app())
    keys = MemoryKeys(
        {
            KEY_A: Principal("tenant-a", "aaaaaaaaaaaa", plan_a),
            KEY_B: Principal("tenant-b", "bbbbbbbbbbbb", TenantPlan(ModelSelector(allow_all=True))),
        }
    )
    routes = [
        ModelRoute("team", "llama", pod_url, aliases=("llama",)),
        ModelRoute("secret", "other", pod_url),
    ]
    gw_runner, gw_url = await _serve(Gateway(keys, routes).app())
    try:
        yield gw_url
    finally:
        await gw_runner.cleanup()
        await pod_runner.cleanup()


def run(plan: TenantPlan, body: Callable[[str, FakePod], Awaitable[None]]) -> FakePod:
    pod = FakePod()

    async def main() -> None:
        async with running(plan, pod) as url:
            await body(url, pod)

    asyncio.run(main())
    return pod


TEAM_ONLY = TenantPlan(ModelSelector(namespaces=("team",)))


def test_completion_through_the_openai_client_reaches_pod_with_tenant() -> None:
    async def body(url: str, pod: FakePod) -> None:
        resp = await client(url).completions.create(model="llama", prompt="hi", max_tokens=4)
        assert resp.choices[0].text == "hello world" and resp.usage and resp.usage.total_tokens == 5

    pod = run(TEAM_ONLY, body)
    headers, sent = pod.seen[0]
    assert headers["X-Deepserve-Tenant"] == "tenant-a" and headers["X-Request-Id"]
    assert sent["model"] == "llama" and "Authorization" not in headers  # the pod's own name


@pytest.mark.parametrize("key", ["ds-revokedkey00-x", "ds-aaaaaaaaaaaa-wrong", "Basic abc"])
def test_bad_key_is_401_and_upstream_never_called(key: str) -> None:
    async def body(url: str, pod: FakePod) -> None:
        with pytest.raises(openai.AuthenticationError) as info:
            await client(url, key).completions.create(model="llama", prompt="hi")
        assert info.value.status_code == 401
        async with aiohttp.ClientSession() as s, s.get(url + "/v1/models") as r:
            assert r.status == 401

    assert run(TEAM_ONLY, body).seen == []


def test_model_outside_plan_reads_like_missing_model() -> None:
    async def body(url: str, pod: FakePod) -> None:
        c = client(url)
        listed = [m.id async for m in c.models.list()]
        assert listed == ["team/llama"]
        errors: list[Any] = []
        for model in ("secret/other", "no/such"):
            with pytest.raises(openai.NotFoundError) as info:
                await c.completions.create(model=model, prompt="hi")
            errors.append(info.value.body)
        assert errors[0] == {**errors[1], "message": errors[0]["message"]}
        b_listed = [m.id async for m in client(url, KEY_B).models.list()]
        assert b_listed == ["secret/other", "team/llama"]

    assert run(TEAM_ONLY, body).seen == []


def test_stream_forces_usage_upstream_but_hides_it_unless_asked() -> None:
    async def body(url: str, pod: FakePod) -> None:
        c = client(url)
        plain = [
            ch
            async for ch in await c.chat.completions.create(
                model="team/llama", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        ]
        assert "".join(ch.choices[0].delta.content or "" for ch in plain) == "hello world"
        assert all(ch.choices and ch.usage is None for ch in plain)
        asked = [
            ch
            async for ch in await c.completions.create(
                model="llama", prompt="hi", stream=True, stream_options={"include_usage": True}
            )
        ]
        assert asked[-1].choices == [] and asked[-1].usage and asked[-1].usage.total_tokens == 5

    pod = run(TEAM_ONLY, body)
    assert [b["stream_options"] for _, b in pod.seen] == [{"include_usage": True}] * 2


def test_forged_tenant_header_is_dropped() -> None:
    async def body(url: str, pod: FakePod) -> None:
        c = openai.AsyncOpenAI(
            base_url=url + "/v1",
            api_key=KEY_A,
            max_retries=0,
            default_headers={"X-Deepserve-Tenant": "tenant-b", "X-Deepserve-Billing": "tenant-b"},
        )
        await c.completions.create(model="llama", prompt="hi")

    headers, _ = run(TEAM_ONLY, body).seen[0]
    assert headers["X-Deepserve-Tenant"] == "tenant-a" and "X-Deepserve-Billing" not in headers
    # the body is relayed as is and read for usage: the pod is never asked to compress it
    assert "Accept-Encoding" not in headers


def test_bad_requests_name_the_field_and_server_keeps_serving() -> None:
    async def body(url: str, pod: FakePod) -> None:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s:
            for data, status, param in [
                (b"{not json", 400, None),
                (b'{"model":"llama","prompt":"x","user":"u"}', 400, "user"),
                (b'{"model":"llama","prompt":"x","temperature":"hot"}', 400, "temperature"),
                (b'{"model":"llama","prompt":"' + b"x" * MAX_BODY_BYTES + b'"}', 413, None),
            ]:
                async with s.post(url + "/v1/completions", data=data) as r:
                    assert r.status == status
                    assert (await r.json())["error"]["param"] == param
        resp = await client(url).completions.create(model="llama", prompt="ok")
        assert resp.choices[0].text == "hello world"

    assert len(run(TEAM_ONLY, body).seen) == 1


def test_requests_per_minute_is_exact_with_retry_after() -> None:
    async def body(url: str, pod: FakePod) -> None:
        c = client(url)
        for _ in range(3):
            await c.completions.create(model="llama", prompt="hi")
        with pytest.raises(openai.RateLimitError) as info:
            await c.completions.create(model="llama", prompt="hi")
        assert 1 <= int(info.value.response.headers["Retry-After"]) <= 60
        await client(url, KEY_B).completions.create(
            model="llama", prompt="hi"
        )  # other tenant unaffected

    plan = TenantPlan(ModelSelector(namespaces=("team",)), requests_per_minute=3)
    assert len(run(plan, body).seen) == 4


def test_concurrency_limit_refuses_the_extra_request() -> None:
    async def body(url: str, pod: FakePod) -> None:
        pod.hold = asyncio.Event()
        c = client(url)
        first = asyncio.create_task(c.completions.create(model="llama", prompt="hi"))
        while not pod.seen:
            await asyncio.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as info:
            await c.completions.create(model="llama", prompt="hi")
        assert info.value.response.headers["Retry-After"] == "1"
        pod.hold.set()
        await first
        await c.completions.create(model="llama", prompt="hi")  # slot freed

    plan = TenantPlan(ModelSelector(namespaces=("team",)), max_concurrent_requests=1)
    assert len(run(plan, body).seen) == 2


def test_spend_cap_is_402(caplog: pytest.LogCaptureFixture) -> None:
    class Spent:
        def month_to_date(self, tenant: str) -> Decimal:
            return Decimal("10")

    async def main() -> None:
        pod_runner, pod_url = await _serve(web.Application())
        plan = TenantPlan(ModelSelector(allow_all=True), monthly_spend_cap=Decimal("10"))
        keys = MemoryKeys({KEY_A: Principal("tenant-a", "aaaaaaaaaaaa", plan)})
        gw = Gateway(keys, [ModelRoute("team", "llama", pod_url)], spend=Spent())
        gw_runner, gw_url = await _serve(gw.app())
        try:
            with pytest.raises(openai.APIStatusError) as info:
                await client(gw_url).completions.create(model="team/llama", prompt="hi")
            assert info.value.status_code == 402
        finally:
            await gw_runner.cleanup()
            await pod_runner.cleanup()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert "secretA" not in caplog.text


def test_tokens_per_minute_admits_on_estimate_and_settles_on_real_usage() -> None:
    async def body(url: str, pod: FakePod) -> None:
        c = client(url)
        # each request is estimated at 1 + 10 tokens; the pod reports 5 used
        for stream in (False, True, False, True):
            if stream:
                async for _ in await c.completions.create(
                    model="llama", prompt="hi", max_tokens=10, stream=True
                ):
                    pass
            else:
                await c.completions.create(model="llama", prompt="hi", max_tokens=10)
        with pytest.raises(openai.RateLimitError) as info:  # 4 x 5 = 20 used: 20 + 11 > 26
            await c.completions.create(model="llama", prompt="hi", max_tokens=10)
        assert "tokens per minute" in info.value.message
        assert 1 <= int(info.value.response.headers["Retry-After"]) <= 60

    plan = TenantPlan(ModelSelector(namespaces=("team",)), tokens_per_minute=26)
    assert len(run(plan, body).seen) == 4
