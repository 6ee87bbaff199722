"""The served gateway: hold-and-wake (ported from the activator), versions, metrics, cancellation."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import openai
import pytest
from gateway_fakes import KEY_A, KEY_B, FakePod, MemoryKeys, client, serve
from prometheus_client.parser import text_string_to_metric_families

from deepserve.operator.autoscaler.io import ActivatorHeld
from deepserve.operator.gateway.hold import HoldConfig, ScaleUp
from deepserve.operator.gateway.routing import ModelRoute, VersionTarget
from deepserve.operator.gateway.server import Gateway, GatewayConfig
from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan

pytestmark = pytest.mark.unit
KEYS = MemoryKeys({
    KEY_A: Principal("tenant-a", "aaaaaaaaaaaa", TenantPlan(ModelSelector(namespaces=("team",)))),
    KEY_B: Principal("tenant-b", "bbbbbbbbbbbb", TenantPlan(ModelSelector(namespaces=("other",)))),
})


def chat(versions: tuple[VersionTarget, ...]) -> ModelRoute:
    return ModelRoute("team", "chat", aliases=("chat",), versions=versions)


@asynccontextmanager
async def gateway(
    routes: list[ModelRoute], scale_up: ScaleUp | None = None, **config: Any
) -> AsyncIterator[tuple[Gateway, str]]:
    gw = Gateway(KEYS, routes, scale_up=scale_up, config=GatewayConfig(**config))
    port = await gw.start()
    try:
        yield gw, f"http://127.0.0.1:{port}"
    finally:
        await gw.stop()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


async def settle(cond: Callable[[], bool]) -> None:
    """Yield to the event loop until ``cond`` holds."""
    for _ in range(200_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_held_requests_are_answered_once_a_replica_is_ready() -> None:
    async def body() -> None:
        pod = FakePod("pod-1")
        runners: list[Any] = []
        asked: list[tuple[str, str, str]] = []
        gw_ref: list[Gateway] = []

        async def scale_up(namespace: str, model: str, version: str) -> None:  # plays the operator
            asked.append((namespace, model, version))
            if not runners:
                runner, url = await serve(pod.app())
                runners.append(runner)
                gw_ref[0].set_routes([chat((VersionTarget("main", 100, (url,)),))])

        async with gateway([chat((VersionTarget("main", 100),))], scale_up,
                           hold=HoldConfig(hold_timeout_s=10)) as (gw, url):
            gw_ref.append(gw)
            c = client(url)
            results = await asyncio.gather(
                *[c.completions.create(model="chat", prompt="hi") for _ in range(5)]
            )
        for r in runners:
            await r.cleanup()
        assert [r.choices[0].text for r in results] == ["hello world"] * 5 and len(pod.seen) == 5
        assert asked[0] == ("team", "chat", "main")
        cold = gw.holder.cold_starts[("team", "chat", "main")]
        assert len(cold) == 1 and cold[0] < 10

    run(body)


def test_full_queue_and_timeout_answer_503_with_retry_after() -> None:
    async def body() -> None:
        hold = HoldConfig(queue_limit=2, hold_timeout_s=0.5, rescale_every_s=0.1)
        async with gateway([chat((VersionTarget("main", 100),))], hold=hold) as (gw, url):
            c = client(url)
            first = [asyncio.create_task(c.completions.create(model="chat", prompt="hi")) for _ in range(2)]
            await settle(lambda: gw.holder.held.get(("team", "chat", "main"), 0) == 2)
            with pytest.raises(openai.InternalServerError) as full:
                await c.completions.create(model="chat", prompt="hi")
            assert full.value.status_code == 503 and "queue is full" in full.value.message
            assert full.value.response.headers["Retry-After"] == "1"
            for outcome in await asyncio.gather(*first, return_exceptions=True):
                assert isinstance(outcome, openai.InternalServerError)
                assert "no replica became ready within 0.5s" in outcome.message
            async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
                metrics = samples(await r.text())
        assert metrics[("deepserve_gateway_refusals_total", (("reason", "hold_queue_full"),))] == 1
        assert metrics[("deepserve_gateway_refusals_total", (("reason", "hold_timeout"),))] == 2
        held_now = ("deepserve_gateway_held_requests", (("model", "chat"), ("namespace", "team"), ("version", "main")))
        assert metrics[held_now] == 0

    run(body)


def test_refused_replica_is_dropped_and_the_request_held_not_failed() -> None:
    async def body() -> None:
        dead = f"http://127.0.0.1:{_closed_port()}"  # a pod that just went away
        pod = FakePod("live")
        runner, live = await serve(pod.app())
        async with gateway([chat((VersionTarget("main", 100, (dead,)),))],
                           hold=HoldConfig(hold_timeout_s=10)) as (gw, url):
            task = asyncio.create_task(client(url).completions.create(model="chat", prompt="hi"))
            await settle(lambda: gw.holder.held.get(("team", "chat", "main"), 0) == 1)
            gw.set_routes([chat((VersionTarget("main", 100, (live,)),))])
            resp = await task
        await runner.cleanup()
        assert resp.choices[0].text == "hello world" and len(pod.seen) == 1

    run(body)


def test_the_operator_reads_held_requests_per_namespace_from_the_gateway() -> None:
    async def body() -> None:
        routes = [chat((VersionTarget("main", 70), VersionTarget("canary", 30))),
                  ModelRoute("other", "chat", versions=(VersionTarget("main", 100),))]
        async with gateway(routes, hold=HoldConfig(hold_timeout_s=1.5)) as (gw, url):
            held = ActivatorHeld({"team": url + "/held/team", "other": url + "/held/other"}, ttl_s=0.0)
            c = client(url)
            waiting = [asyncio.create_task(c.completions.create(model="chat", prompt="hi"))
                       for _ in range(3)]
            await settle(lambda: sum(gw.holder.held.values()) == 3)
            seen = await asyncio.to_thread(lambda: (held("team", "chat"), held("other", "chat")))
            assert seen == (3, 0)  # both versions summed; the other namespace's model: none
            assert all(isinstance(o, openai.InternalServerError)
                       for o in await asyncio.gather(*waiting, return_exceptions=True))
            assert await asyncio.to_thread(held, "team", "chat") == 0

    run(body)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Metrics text parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_versions_pin_and_session_through_the_gateway_and_metrics_carry_no_key() -> None:
    async def body() -> None:
        a, b = FakePod("a"), FakePod("b")
        (ra, url_a), (rb, url_b) = await serve(a.app()), await serve(b.app())
        route = chat((VersionTarget("a", 50, (url_a,)), VersionTarget("b", 50, (url_b,))))
        async with gateway([route]) as (_gw, url):
            served: Counter[str] = Counter()
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s:
                async def post(headers: dict[str, str]) -> str:
                    async with s.post(url + "/v1/completions", headers=headers,
                                      json={"model": "chat", "prompt": "hi"}) as r:
                        assert r.status == 200
                        served_by = str((await r.json())["id"])  # the fake pod's name
                        assert r.headers["X-Deepserve-Version"] == served_by
                        return served_by
                for _ in range(10):
                    served[await post({"X-Deepserve-Version": "b"})] += 1
                sticky = {await post({"X-Deepserve-Session": "user-7"}) for _ in range(10)}
                spread = Counter([await post({"X-Deepserve-Session": f"u{i}"}) for i in range(60)])
                async with s.post(url + "/v1/completions", headers={"X-Deepserve-Version": "zzz"},
                                  json={"model": "chat", "prompt": "hi"}) as r:
                    assert r.status == 404 and (await r.json())["error"]["code"] == "version_not_found"
                async with s.get(url + "/metrics") as r:
                    text = await r.text()
            with pytest.raises(openai.AuthenticationError):
                await client(url, "ds-aaaaaaaaaaaa-wrongsecret").completions.create(model="chat", prompt="x")
            async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
                text = await r.text()
        await ra.cleanup()
        await rb.cleanup()
        assert served == {"b": 10} and len(sticky) == 1 and min(spread.values()) >= 15
        metrics = samples(text)
        assert metrics[("deepserve_gateway_requests_total", (("model", "team/chat"), ("status", "200")))] == 80
        assert metrics[("deepserve_gateway_refusals_total", (("reason", "auth"),))] == 1
        assert metrics[("deepserve_gateway_tokens_total", (("model", "team/chat"),))] == 400
        count = ("deepserve_gateway_request_seconds_count", (("model", "team/chat"),))
        assert metrics[count] == 80  # proxied requests (refusals are counted, not timed)
        for secret in ("secretA", "aaaaaaaaaaaa", "wrongsecret", "tenant-a"):
            assert secret not in text

    run(body)


def test_caller_dropping_a_stream_closes_the_upstream_request() -> None:
    async def body() -> None:
        pod = FakePod("endless", endless=True)
        runner, pod_url = await serve(pod.app())
        async with gateway([chat((VersionTarget("main", 100, (pod_url,)),))]) as (gw, url):
            async with (
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s,
                s.post(url + "/v1/completions", json={"model": "chat", "prompt": "hi", "stream": True}) as r,
            ):
                assert r.status == 200
                await r.content.readline()  # one event arrived; now the caller goes away
            await asyncio.wait_for(pod.disconnected.wait(), 5)  # the pod saw its caller drop
            await settle(lambda: gw._limiter.in_flight("tenant-a") == 0)
        await runner.cleanup()

    run(body)


def test_idle_connections_are_closed_and_do_not_starve_others() -> None:
    async def body() -> None:
        pod = FakePod()
        runner, pod_url = await serve(pod.app())
        async with gateway([chat((VersionTarget("main", 100, (pod_url,)),))],
                           keepalive_timeout_s=0.5, body_timeout_s=0.5) as (_gw, url):
            port = int(url.rsplit(":", 1)[1])
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
            slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
            slow.write(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
                       "Content-Length: 100\r\n\r\n{".encode())  # a body that never finishes
            resp = await client(url).completions.create(model="chat", prompt="hi")  # still served
            assert resp.choices[0].text == "hello world"
            status_line = await asyncio.wait_for(slow_reader.readline(), 5)
            assert b" 408 " in status_line
            closed = [await asyncio.wait_for(reader.read(), 5) for reader, _ in idle]
            assert closed == [b""] * 300  # every idle connection was closed by the gateway
            for _, writer in idle:
                writer.close()
            slow.close()
        await runner.cleanup()

    run(body)


def test_tls_serves_https_with_the_given_certificate(tmp_path: Any) -> None:
    import ssl

    from deepserve.operator.dev.pki import create_pki
    from deepserve.operator.gateway.server import tls_context

    pki = create_pki(tmp_path)

    async def body() -> None:
        pod = FakePod()
        runner, pod_url = await serve(pod.app())
        gw = Gateway(KEYS, [chat((VersionTarget("main", 100, (pod_url,)),))])
        port = await gw.start(ssl_context=tls_context(str(pki.serving_cert), str(pki.serving_key)))
        try:
            trust = ssl.create_default_context(cafile=str(pki.ca_cert))
            async with (
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s,
                s.post(f"https://127.0.0.1:{port}/v1/completions", ssl=trust,
                       json={"model": "chat", "prompt": "hi"}) as r,
            ):
                assert r.status == 200 and (await r.json())["choices"][0]["text"] == "hello world"
            async with aiohttp.ClientSession() as s:  # plain HTTP to the TLS port: no answer
                with pytest.raises(aiohttp.ClientError):
                    await s.get(f"http://127.0.0.1:{port}/v1/models")
        finally:
            await gw.stop()
            await runner.cleanup()

    run(body)


def test_pod_load_gauges_are_scraped_from_the_pods_metrics_page() -> None:
    from aiohttp import web

    from deepserve.engine.openai_frontend.metrics import render_gauges
    from deepserve.operator.gateway.podload import PodLoadScraper

    gauges = {"deepserve_requests_queued": 3.0, "deepserve_kv_cache_usage_ratio": 0.75}

    async def body() -> None:
        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(text=render_gauges("team/chat", gauges), content_type="text/plain")

        busy_pod = web.Application()
        busy_pod.router.add_get("/metrics", metrics)
        (rb, busy), (rq, quiet) = await serve(busy_pod), await serve(FakePod().app())  # quiet: no /metrics
        gw = Gateway(KEYS, [chat((VersionTarget("main", 100, (busy, quiet)),))])
        scraper = PodLoadScraper(gw.router)
        try:
            async with aiohttp.ClientSession() as s:
                await scraper.scrape_once(s)
        finally:
            await rb.cleanup()
            await rq.cleanup()
        assert gw.router.pod_load == {busy: (3.0, 0.75)}  # the page without gauges counts nothing
        state = gw.router.state(gw.router.routes()[0], "main")
        assert state is not None and gw.router.pick(state, []) == quiet

    run(body)


def test_with_an_admin_port_metrics_are_not_on_the_public_port() -> None:
    async def body() -> None:
        gw = Gateway(KEYS, [chat((VersionTarget("main", 100),))])
        port = await gw.start(admin_port=0)
        assert gw.admin_address is not None
        admin = f"http://{gw.admin_address[0]}:{gw.admin_address[1]}"
        try:
            async with aiohttp.ClientSession() as s:
                for path in ("/metrics", "/held/team"):
                    async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                        assert r.status == 404
                    async with s.get(admin + path) as r:
                        assert r.status == 200
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 200
        finally:
            await gw.stop()

    run(body)


def test_a_caller_leaving_a_waiting_request_frees_its_slot_and_counts_499() -> None:
    async def body() -> None:
        pod = FakePod(hold=asyncio.Event())
        runner, pod_url = await serve(pod.app())
        async with gateway([chat((VersionTarget("main", 100, (pod_url,)),))]) as (gw, url):
            timeout = aiohttp.ClientTimeout(total=0.5)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s:
                with pytest.raises(TimeoutError):
                    await s.post(url + "/v1/completions", json={"model": "chat", "prompt": "hi"},
                                 timeout=timeout)
            await settle(lambda: gw._limiter.in_flight("tenant-a") == 0)
            key = ("deepserve_gateway_requests_total", (("model", "team/chat"), ("status", "499")))
            await settle(lambda: samples(gw.metrics.render().decode()).get(key) == 1)
            pod.hold.set()
        await runner.cleanup()

    run(body)


def test_keys_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    async def body() -> None:
        dead = f"http://127.0.0.1:{_closed_port()}"
        pod = FakePod("endless", endless=True)
        runner, pod_url = await serve(pod.app())
        routes = [chat((VersionTarget("main", 100, (pod_url,)),)),
                  ModelRoute("team", "down", versions=(VersionTarget("main", 100, (dead,)),))]
        async with gateway(routes, hold=HoldConfig(hold_timeout_s=0.3, rescale_every_s=0.1)) as (_gw, url):
            for key in (KEY_A, "ds-aaaaaaaaaaaa-wrongsecret", KEY_B):
                with pytest.raises(openai.APIStatusError):  # 503 (held, then timed out), 401, 404
                    await client(url, key).completions.create(model="team/down", prompt="hi")
            async with (
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s,
                s.post(url + "/v1/completions", json={"model": "chat", "prompt": "hi", "stream": True}) as r,
            ):
                await r.content.readline()  # then drop the stream
            await asyncio.wait_for(pod.disconnected.wait(), 5)
        await runner.cleanup()

    with caplog.at_level(logging.DEBUG):
        run(body)
    assert "refused" in caplog.text  # the failure paths did log
    for secret in ("secretA", "secretB", "wrongsecret", KEY_A, KEY_B):
        assert secret not in caplog.text
