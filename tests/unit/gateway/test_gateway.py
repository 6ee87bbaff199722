"""The gateway with the real ``openai`` client in front and a fake pod (aiohttp) behind it."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict

from deepserve.engine.openai_api import (
    DONE_EVENT,
    MAX_BODY_BYTES,
    chat_chunk,
    completion_chunk,
    completion_response,
    sse_event,
    usage,
)
from deepserve.operator.gateway.server import Gateway, ModelRoute
from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan

KEY_A = "ds-aaaaaaaaaaaa-secretA"
KEY_B = "ds-bbbbbbbbbbbb-secretB"


class MemoryKeys:
    """A tiny Authenticator: exact keys, compared in constant time."""

    def __init__(self, keys: dict[str, Principal]) -> None:
        self.keys = keys

    def authenticate(self, presented_key: str) -> Principal | None:
        found = None
        for key, principal in self.keys.items():
            if hmac.compare_digest(key.encode(), presented_key.encode()):
                found = principal
        return found


@dataclass
class FakePod:
    """Speaks the pod's OpenAI protocol and records what reached it."""

    seen: list[tuple[CIMultiDict[str], dict[str, Any]]] = field(default_factory=list)
    hold: asyncio.Event | None = None

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        self.seen.append((request.headers.copy(), body))
        if self.hold is not None:
            await self.hold.wait()
        words = ["hello", " world"]
        if not body.get("stream"):
            return web.json_response(
                completion_response("c1", body["model"], "".join(words), "stop", 3, 2)
            )
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        chunk = chat_chunk if request.path.endswith("chat/completions") else completion_chunk
        for i, w in enumerate(words):
            await out.write(sse_event(chunk("c1", body["model"], w, "stop" if i else None)))
        if body.get("stream_options", {}).get("include_usage"):
            await out.write(sse_event(chunk("c1", body["model"], "", None, usage(3, 2))))
        await out.write(DONE_EVENT)
        return out


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def running(plan_a: TenantPlan, pod: FakePod) -> AsyncIterator[str]:
    pod_app = web.Application()
    pod_app.router.add_post("/v1/completions", pod.completions)
    pod_app.router.add_post("/v1/chat/completions", pod.completions)
    pod_runner, pod_url = await _serve(pod_app)
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


def client(url: str, key: str = KEY_A) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_completion_through_the_openai_client_reaches_pod_with_tenant() -> None:
    async def body(url: str, pod: FakePod) -> None:
        resp = await client(url).completions.create(model="llama", prompt="hi", max_tokens=4)
        assert resp.choices[0].text == "hello world" and resp.usage and resp.usage.total_tokens == 5

    pod = run(TEAM_ONLY, body)
    headers, sent = pod.seen[0]
    assert headers["X-Deepserve-Tenant"] == "tenant-a" and headers["X-Request-Id"]
    assert sent["model"] == "team/llama" and "Authorization" not in headers


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
            default_headers={"X-Deepserve-Tenant": "tenant-b", "X-Deepserve-Version": "v9"},
        )
        await c.completions.create(model="llama", prompt="hi")

    headers, _ = run(TEAM_ONLY, body).seen[0]
    assert headers["X-Deepserve-Tenant"] == "tenant-a" and "X-Deepserve-Version" not in headers


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
