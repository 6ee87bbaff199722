"""KServe v2 paths through the gateway (ported from the activator's tests), behind the keys."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gateway_fakes import KEY_A, KEY_B, MemoryKeys, serve

from deepserve.operator.gateway.hold import HoldConfig
from deepserve.operator.gateway.routing import ModelRoute, VersionTarget
from deepserve.operator.gateway.server import Gateway, GatewayConfig
from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan

pytestmark = pytest.mark.unit
INFER = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
KEYS = MemoryKeys({
    KEY_A: Principal("tenant-a", "aaaaaaaaaaaa", TenantPlan(ModelSelector(namespaces=("team",)))),
    KEY_B: Principal("tenant-b", "bbbbbbbbbbbb", TenantPlan(ModelSelector(namespaces=("other",)))),
})


class FakeTriton:
    """A KServe v2 look-alike answering with its own name; records the headers it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, str]] = []

    async def infer(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        body = await request.json()
        return web.json_response({"model_name": request.match_info["m"], "served_by": self.name,
                                  "outputs": [{"name": "echo", "data": body["inputs"][0]["data"]}]})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(3):
            await out.write(f'data: {{"text_output": "t{i}"}}\n\n'.encode())
        await out.write_eof()
        return out

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/models/{m}/infer", self.infer)
        app.router.add_post("/v2/models/{m}/generate_stream", self.stream)
        app.router.add_get("/v2/models/{m}/ready", self.ready)
        return app


def target(name: str, weight: int, *kserve: str) -> VersionTarget:
    return VersionTarget(name, weight, tuple(f"openai-of-{u}" for u in kserve), kserve)


async def post(s: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
    async with s.post(url, json=INFER, **kw) as r:
        return r.status, dict(r.headers), json.loads(await r.text() or "null")


def test_v2_infer_is_held_until_ready_then_answered_and_stream_passes_through() -> None:
    async def body() -> None:
        pod = FakeTriton("pod-1")
        runner, url = await serve(pod.app())
        gw_ref: list[Gateway] = []

        async def scale_up(namespace: str, model: str, version: str) -> None:
            gw_ref[0].set_routes([ModelRoute("team", "chat", versions=(target("main", 100, url),))])

        gw = Gateway(KEYS, [ModelRoute("team", "chat", versions=(VersionTarget("main", 100),))],
                     scale_up=scale_up, config=GatewayConfig(hold=HoldConfig(hold_timeout_s=10)))
        gw_ref.append(gw)
        base = f"http://127.0.0.1:{await gw.start()}/v2/models/team/chat"
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s:
                results = await asyncio.gather(*[post(s, base + "/infer") for _ in range(3)])
                async with s.post(base + "/generate_stream", json={"text_input": "x"}) as r:
                    chunks = (await r.text()).count("data: ")
                async with s.get(base + "/ready") as r:
                    ready = r.status
        finally:
            await gw.stop()
            await runner.cleanup()
        assert [(st, b["served_by"], b["model_name"]) for st, _, b in results] == [(200, "pod-1", "chat")] * 3
        assert chunks == 3 and ready == 200
        assert pod.seen[0]["X-Deepserve-Tenant"] == "tenant-a" and "Authorization" not in pod.seen[0]

    asyncio.run(asyncio.wait_for(body(), 30))


def test_v2_needs_a_key_and_the_plan_and_splits_versions() -> None:
    async def body() -> None:
        a, b = FakeTriton("a"), FakeTriton("b")
        (ra, url_a), (rb, url_b) = await serve(a.app()), await serve(b.app())
        route = ModelRoute("team", "chat", versions=(target("a", 70, url_a), target("b", 30, url_b)))
        gw = Gateway(KEYS, [route], router=None)
        base = f"http://127.0.0.1:{await gw.start()}/v2/models/team/chat/infer"
        try:
            async with aiohttp.ClientSession() as anon:
                status, _, err = await post(anon, base)
                assert status == 401 and "API key" in err["error"]
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_B}"}) as other:
                status, _, err = await post(other, base)  # tenant-b's plan has no team/* model
                assert status == 404 and "does not exist" in err["error"]
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s:
                seen: Counter[str] = Counter()
                for _ in range(200):
                    status, headers, out = await post(s, base)
                    assert status == 200 and headers["X-Deepserve-Version"] == out["served_by"]
                    seen[out["served_by"]] += 1
                pinned = await post(s, base, headers={"X-Deepserve-Version": "b"})
                unknown = await post(s, base, headers={"X-Deepserve-Version": "zzz"})
        finally:
            await gw.stop()
            await ra.cleanup()
            await rb.cleanup()
        assert 0.6 <= seen["a"] / 200 <= 0.8, seen
        assert pinned[2]["served_by"] == "b" and unknown[0] == 404
        assert len(a.seen) + len(b.seen) == 201  # nothing unauthenticated or outside the plan arrived

    asyncio.run(asyncio.wait_for(body(), 30))
