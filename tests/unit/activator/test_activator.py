"""The activator against fake Triton upstreams on 127.0.0.1: hold, 503s, weights, streaming."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from deepserve.operator.activator import (
    VERSION_HEADER,
    Activator,
    ActivatorConfig,
    Routes,
    TrafficSplit,
)

pytestmark = pytest.mark.unit
INFER = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}


async def fake_triton(name: str) -> tuple[web.AppRunner, str]:
    """A KServe v2 look-alike answering with its own name."""
    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"model_name": request.match_info["m"], "served_by": name,
                                  "outputs": [{"name": "echo", "data": body["inputs"][0]["data"]}]})

    async def stream(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(3):
            await out.write(f'data: {{"text_output": "t{i}"}}\n\n'.encode())
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/v2/models/{m}/infer", infer)
    app.router.add_post("/v2/models/{m}/generate_stream", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


async def settle(cond: Callable[[], bool]) -> None:
    """Yield to the event loop until ``cond`` holds (no wall-clock sleeping)."""
    for _ in range(100_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def post(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, Any], str]:
    async with session.post(url, json=INFER, **kw) as r:
        text = await r.text()
        return r.status, dict(r.headers), text


def test_held_request_is_answered_once_a_replica_is_ready() -> None:
    async def body() -> None:
        routes = Routes(seed=1)
        routes.set_model("chat", {"main": 100})
        upstreams: list[web.AppRunner] = []
        asked: list[tuple[str, str]] = []

        async def scale_up(model: str, version: str) -> None:  # plays the operator: a replica appears
            asked.append((model, version))
            if not upstreams:
                runner, url = await fake_triton("pod-1")
                upstreams.append(runner)
                routes.set_upstreams(model, version, [url])

        act = Activator(routes, scale_up, ActivatorConfig(hold_timeout_s=10))
        port = await act.start()
        try:
            async with aiohttp.ClientSession() as s:
                results = await asyncio.gather(*[post(s, f"http://127.0.0.1:{port}/v2/models/chat/infer")
                                                 for _ in range(5)])
        finally:
            await act.stop()
            for r in upstreams:
                await r.cleanup()
        assert [st for st, _, _ in results] == [200] * 5
        assert all(json.loads(t)["served_by"] == "pod-1" for _, _, t in results)
        assert asked[0] == ("chat", "main")
        assert len(act.cold_starts[("chat", "main")]) == 1 and act.cold_starts[("chat", "main")][0] < 10
    run(body)


def test_full_queue_and_timeout_answer_503() -> None:
    async def body() -> None:
        routes = Routes(seed=1)
        routes.set_model("chat", {"main": 100})
        act = Activator(routes, None, ActivatorConfig(queue_limit=2, hold_timeout_s=0.5))
        port = await act.start()
        url = f"http://127.0.0.1:{port}/v2/models/chat/infer"
        try:
            async with aiohttp.ClientSession() as s:
                first = [asyncio.create_task(post(s, url)) for _ in range(2)]
                await settle(lambda: act._held.get(("chat", "main"), 0) == 2)
                status, headers, text = await post(s, url)
                assert status == 503 and "queue is full" in json.loads(text)["error"]
                assert headers.get("Retry-After") == "1"
                for st, _, t in await asyncio.gather(*first):
                    assert st == 503 and "no replica became ready within 0.5s" in json.loads(t)["error"]
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    metrics = await r.text()
        finally:
            await act.stop()
        assert 'deepserve_activator_rejected_total{model="chat",reason="queue_full",version="main"} 1.0' in metrics
        assert 'deepserve_activator_rejected_total{model="chat",reason="timeout",version="main"} 2.0' in metrics
    run(body)


def test_weights_split_traffic_and_pinning_works() -> None:
    async def body() -> None:
        a, url_a = await fake_triton("a")
        b, url_b = await fake_triton("b")
        routes = Routes(seed=42)
        routes.set_model("chat", {"a": 70, "b": 30})
        routes.set_upstreams("chat", "a", [url_a])
        routes.set_upstreams("chat", "b", [url_b])
        act = Activator(routes)
        port = await act.start()
        url = f"http://127.0.0.1:{port}/v2/models/chat/infer"
        try:
            async with aiohttp.ClientSession() as s:
                seen = Counter()
                for _ in range(300):
                    status, headers, text = await post(s, url)
                    assert status == 200 and headers[VERSION_HEADER] == json.loads(text)["served_by"]
                    seen[json.loads(text)["served_by"]] += 1
                pinned = await post(s, url, headers={VERSION_HEADER: "b"})
                unknown = await post(s, url, headers={VERSION_HEADER: "zzz"})
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    metrics = await r.text()
        finally:
            await act.stop()
            await a.cleanup()
            await b.cleanup()
        assert 0.63 <= seen["a"] / 300 <= 0.77, seen
        assert json.loads(pinned[2])["served_by"] == "b" and unknown[0] == 404
        assert f'deepserve_activator_requests_total{{code="200",model="chat",version="a"}} {seen["a"]}.0' in metrics
    run(body)


def test_split_is_deterministic_for_a_seed_and_skips_zero_weights() -> None:
    one = [TrafficSplit({"a": 50, "b": 50, "c": 0}, seed=3).choose() for _ in range(1)]
    s1, s2 = TrafficSplit({"a": 50, "b": 50, "c": 0}, seed=3), TrafficSplit({"a": 50, "b": 50, "c": 0}, seed=3)
    seq1 = [s1.choose() for _ in range(200)]
    assert seq1 == [s2.choose() for _ in range(200)] and one[0] == seq1[0]
    assert set(seq1) == {"a", "b"}
    assert TrafficSplit({"a": 0}).choose() is None


def test_stream_passes_through_and_refused_upstream_is_rehold_not_failed() -> None:
    async def body() -> None:
        with socket.socket() as sock:  # a port nobody listens on: a pod that just went away
            sock.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
        live, url_live = await fake_triton("live")
        routes = Routes(seed=1)
        routes.set_model("chat", {"main": 100})
        routes.set_upstreams("chat", "main", [dead])

        def scale_up(model: str, version: str) -> None:  # sync callbacks run in a thread
            pass

        act = Activator(routes, scale_up, ActivatorConfig(hold_timeout_s=10))
        port = await act.start()
        try:
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(post(s, f"http://127.0.0.1:{port}/v2/models/chat/infer"))
                await settle(lambda: act._held.get(("chat", "main"), 0) == 1)
                routes.set_upstreams("chat", "main", [url_live])
                status, _, text = await task
                async with s.post(f"http://127.0.0.1:{port}/v2/models/chat/generate_stream",
                                  json={"text_input": "x"}) as r:
                    chunks = (await r.text()).count("data: ")
        finally:
            await act.stop()
            await live.cleanup()
        assert status == 200 and json.loads(text)["served_by"] == "live"
        assert chunks == 3
    run(body)


def test_the_operator_reads_how_many_requests_the_activator_holds() -> None:
    from deepserve.operator.autoscaler.io import ActivatorHeld

    async def body() -> None:
        routes = Routes(seed=1)
        routes.set_model("chat", {"main": 70, "canary": 30})
        routes.set_model("other", {"main": 100})
        act = Activator(routes, None, ActivatorConfig(hold_timeout_s=1.5))
        port = await act.start()
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        held = ActivatorHeld({"team-a": metrics_url}, ttl_s=0.0)
        dead = ActivatorHeld({"team-a": f"http://127.0.0.1:{_closed_port()}/metrics"})
        try:
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{port}/v2/models/chat/infer"
                waiting = [asyncio.create_task(post(s, url)) for _ in range(3)]
                await settle(lambda: sum(v for (m, _), v in act._held.items() if m == "chat") == 3)
                seen = await asyncio.to_thread(lambda: (held("team-a", "chat"), held("team-a", "other"),
                                                        held("team-b", "chat"), dead("team-a", "chat")))
                assert seen == (3, 0, 0, 0)  # both versions summed; other namespace / dead activator: none
                # no replica appears: the held requests time out (503) and the count read drops to 0
                assert [st for st, _, _ in await asyncio.gather(*waiting)] == [503] * 3
                assert await asyncio.to_thread(held, "team-a", "chat") == 0
        finally:
            await act.stop()
    run(body)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
