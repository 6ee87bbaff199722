"""The activator: an HTTP proxy for Triton's HTTP API (KServe v2) that makes scale-from-zero safe.

A request for ``/v2/models/<model>/...`` (``infer``, ``generate``, ``generate_stream``,
``ready``, metadata) picks a version by weight (or ``X-Deepserve-Version``), and is
forwarded to that version's Ready upstream with the fewest requests in flight. When the
version has no Ready upstream (scaled to zero, or all pods starting), the request is
*held* in a bounded queue: the activator asks for a scale-up (``scale_up(model, version)``,
repeated while it waits), and forwards the request the moment an upstream is Ready. A full
queue or a hold longer than ``hold_timeout_s`` answers 503 with a KServe v2 error body
(``{"error": "..."}``) and ``Retry-After``. A refused connection (a pod that went away)
re-holds the request instead of failing it. Cold-start time (first held request to first
Ready upstream) is measured per version and exported with per-version request metrics on
``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from deepserve.operator.activator.routing import Routes, VersionRoute

log = logging.getLogger(__name__)

VERSION_HEADER = "X-Deepserve-Version"
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length"}
ScaleUp = Callable[[str, str], Awaitable[None] | None]


@dataclass(frozen=True)
class ActivatorConfig:
    """Bounds of the hold queue and timings."""

    queue_limit: int = 100  # held requests per version
    hold_timeout_s: float = 120.0
    rescale_every_s: float = 2.0
    connect_timeout_s: float = 5.0
    max_body_bytes: int = 64 * 1024 * 1024


class ActivatorMetrics:
    """Per-version figures in a private Prometheus registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.requests = Counter("deepserve_activator_requests", "Requests answered, by upstream status code.",
                                [*labels, "code"], registry=self.registry)
        self.rejected = Counter("deepserve_activator_rejected", "Requests answered 503 by the activator.",
                                [*labels, "reason"], registry=self.registry)
        self.latency = Histogram("deepserve_activator_request_seconds", "Time to the response headers, "
                                 "holding included.", labels, registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.held = Gauge("deepserve_activator_held_requests", "Requests held waiting for a Ready replica.",
                          labels, registry=self.registry)
        self.cold_start = Histogram("deepserve_activator_cold_start_seconds", "First held request to first "
                                    "Ready replica.", labels, registry=self.registry,
                                    buckets=(.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))


class Activator:
    """The proxy; ``app()`` is an aiohttp application, ``start(host, port)`` serves it."""

    def __init__(self, routes: Routes, scale_up: ScaleUp | None = None,
                 config: ActivatorConfig | None = None) -> None:
        self.routes = routes
        self.scale_up = scale_up
        self.config = config or ActivatorConfig()
        self.metrics = ActivatorMetrics()
        self.cold_starts: dict[tuple[str, str], list[float]] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._cold_since: dict[tuple[str, str], float] = {}
        self._last_ask: dict[tuple[str, str], float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- serving -----------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application (routes: /metrics, /healthz, /v2/...)."""
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/v2/models/{model}", self._proxy)
        app.router.add_route("*", "/v2/models/{model}/{rest:.*}", self._proxy)
        app.on_cleanup.append(self._close_session)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on ``host:port`` (0: a free port); returns the port."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        return int(server.sockets[0].getsockname()[1]) if server is not None else port  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop serving and close upstream connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._session

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "models": self.routes.models()})

    # ---- one request -------------------------------------------------------
    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        version = self.routes.choose_version(model, request.headers.get(VERSION_HEADER))
        if version is None:
            return web.json_response({"error": f"unknown model or version for {model!r}"}, status=404)
        started = time.monotonic()
        body = await request.read()
        key = (model, version)
        while True:
            route = self.routes.route(model, version)
            if route is None:
                return web.json_response({"error": f"model {model!r} version {version!r} was removed"},
                                         status=404)
            upstream = Routes.pick_upstream(route)
            if upstream is None:
                reject = await self._hold(key, route, started)
                if reject is not None:
                    return reject
                continue
            try:
                return await self._forward(request, body, key, route, upstream, started)
            except aiohttp.ClientConnectorError as err:  # never reached the server: safe to retry
                log.warning("%s/%s: upstream %s refused (%s); holding the request", model, version, upstream, err)
                self.routes.drop_upstream(model, version, upstream)

    async def _hold(self, key: tuple[str, str], route: VersionRoute, started: float) -> web.Response | None:
        """Wait for a Ready upstream; None when one appeared, else the 503 to send."""
        model, version = key
        if self._held.get(key, 0) >= self.config.queue_limit:
            self.metrics.rejected.labels(model, version, "queue_full").inc()
            return _unavailable(f"model {model!r} version {version!r} is starting and its queue is full "
                                f"({self.config.queue_limit} requests held); retry shortly")
        left = self.config.hold_timeout_s - (time.monotonic() - started)
        if left <= 0:
            return self._timed_out(key)
        self._held[key] = self._held.get(key, 0) + 1
        self.metrics.held.labels(model, version).set(self._held[key])
        self._cold_since.setdefault(key, time.monotonic())
        try:
            deadline = time.monotonic() + left
            while not route.ready.is_set():
                await self._ask_scale_up(key)
                wait = min(self.config.rescale_every_s, deadline - time.monotonic())
                if wait <= 0:
                    return self._timed_out(key)
                try:
                    await asyncio.wait_for(route.ready.wait(), timeout=wait)
                except TimeoutError:
                    continue
            since = self._cold_since.pop(key, None)
            if since is not None:
                seconds = time.monotonic() - since
                self.cold_starts.setdefault(key, []).append(seconds)
                self.metrics.cold_start.labels(model, version).observe(seconds)
                log.info("%s/%s: cold start took %.2fs", model, version, seconds)
            return None
        finally:
            self._held[key] -= 1
            self.metrics.held.labels(model, version).set(self._held[key])

    def _timed_out(self, key: tuple[str, str]) -> web.Response:
        model, version = key
        self.metrics.rejected.labels(model, version, "timeout").inc()
        return _unavailable(f"model {model!r} version {version!r}: no replica became ready within "
                            f"{self.config.hold_timeout_s:g}s")

    async def _ask_scale_up(self, key: tuple[str, str]) -> None:
        now = time.monotonic()
        if self.scale_up is None or now - self._last_ask.get(key, -1e9) < self.config.rescale_every_s:
            return
        self._last_ask[key] = now
        task = asyncio.create_task(self._call_scale_up(key))  # never delays the wait itself
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call_scale_up(self, key: tuple[str, str]) -> None:
        assert self.scale_up is not None
        try:
            if inspect.iscoroutinefunction(self.scale_up):
                await self.scale_up(*key)
            else:
                await asyncio.to_thread(self.scale_up, *key)  # e.g. a blocking API write
        except Exception:  # the next ask retries; the request keeps waiting
            log.exception("%s/%s: scale-up request failed", *key)

    async def _forward(self, request: web.Request, body: bytes, key: tuple[str, str], route: VersionRoute,
                       upstream: str, started: float) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        url = upstream.rstrip("/") + request.rel_url.path_qs
        route.inflight[upstream] = route.inflight.get(upstream, 0) + 1
        try:
            async with self._client().request(request.method, url, data=body, headers=headers) as up:
                self.metrics.latency.labels(*key).observe(time.monotonic() - started)
                self.metrics.requests.labels(*key, str(up.status)).inc()
                out = web.StreamResponse(status=up.status, reason=up.reason)
                for k, v in up.headers.items():
                    if k.lower() not in _HOP:
                        out.headers[k] = v
                out.headers[VERSION_HEADER] = key[1]
                if up.headers.get("Content-Length") and "chunked" not in up.headers.get("Transfer-Encoding", ""):
                    out.content_length = int(up.headers["Content-Length"])
                await out.prepare(request)
                async for chunk in up.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        finally:
            if upstream in route.inflight:
                route.inflight[upstream] -= 1


def _unavailable(message: str) -> web.Response:
    return web.json_response({"error": message}, status=503, headers={"Retry-After": "1"})
