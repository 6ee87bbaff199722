"""The gateway's aiohttp app: authenticate, check the plan and limits, route, proxy.

Nothing reaches an upstream before the key, the plan's model list and the limits all pass.
Upstream requests carry only headers the gateway builds itself (so a caller's
``X-Deepserve-*`` or hop-by-hop headers never pass), plus ``X-Deepserve-Tenant`` and
``X-Request-Id``. Streams force ``stream_options.include_usage`` upstream so the gateway
learns the token count; the usage chunk reaches the caller only when the caller asked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from deepserve.engine.openai_api import MAX_BODY_BYTES, OpenAIError, parse_chat, parse_completion
from deepserve.operator.gateway.config import Discovery, GatewayConfig, tls_context
from deepserve.operator.gateway.dispatch import dispatch
from deepserve.operator.gateway.errors import (
    Refused,
    error_response,
    maybe_await,
    not_found,
    read_within,
)
from deepserve.operator.gateway.hold import Holder, ScaleUp
from deepserve.operator.gateway.kserve import KServeProxy
from deepserve.operator.gateway.limits import Refusal, TenantLimiter, Ticket, estimate_tokens
from deepserve.operator.gateway.metrics import UNKNOWN_MODEL, GatewayMetrics
from deepserve.operator.gateway.podload import PodLoadScraper
from deepserve.operator.gateway.prefix import block_hashes
from deepserve.operator.gateway.proxy import (
    REQUEST_ID_HEADER,
    VERSION_HEADER,
    Outcome,
    relay_stream,
    relay_whole,
)
from deepserve.operator.gateway.redis_limits import RedisLimiter
from deepserve.operator.gateway.routing import ModelRoute, Router, VersionState
from deepserve.operator.tenancy import Authenticator, Principal, SpendSource

log = logging.getLogger(__name__)

TENANT_HEADER = "X-Deepserve-Tenant"
SESSION_HEADER = "X-Deepserve-Session"
__all__ = ["SESSION_HEADER", "TENANT_HEADER", "Gateway", "GatewayConfig", "ModelRoute", "tls_context"]


class Gateway:
    """The OpenAI front door; ``app()`` builds the aiohttp app, ``start()`` serves it."""

    def __init__(
        self,
        authenticator: Authenticator,
        routes: list[ModelRoute],
        spend: SpendSource | None = None,
        limiter: TenantLimiter | RedisLimiter | None = None,
        new_request_id: Callable[[], str] = lambda: os.urandom(16).hex(),  # 128 random bits
        *,
        config: GatewayConfig | None = None,
        scale_up: ScaleUp | None = None,
        discovery: Discovery | None = None,
        router: Router | None = None,
    ) -> None:
        self._auth = authenticator
        self._spend = spend
        self._limiter = limiter or TenantLimiter()
        self._new_id = new_request_id
        self.config = config or GatewayConfig()
        self.router = router or Router()
        self.router.set_routes(routes)
        self.metrics = GatewayMetrics()
        self.holder = Holder(self.config.hold, scale_up, self.metrics)
        self._discovery = discovery
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._scraper: PodLoadScraper | None = None
        self._admin_runner: web.AppRunner | None = None
        self.admin_address: tuple[str, int] | None = None  # (host, port) once served apart

    @property
    def session(self) -> aiohttp.ClientSession:
        """The upstream client session (exists while the app runs)."""
        assert self._session is not None, "the gateway app is not running"
        return self._session

    def new_request_id(self) -> str:
        """A fresh request id."""
        return self._new_id()

    def set_routes(self, routes: Sequence[ModelRoute]) -> None:
        """Replace the routes (call on the gateway's event loop); held requests wake up."""
        self.router.set_routes(routes)

    # ---- serving -----------------------------------------------------------
    def app(self, with_admin: bool = True) -> web.Application:
        """The aiohttp application; ``with_admin`` also mounts :meth:`admin_app`'s paths."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/healthz", self._healthz)
        if with_admin:
            self._add_admin_routes(app)
        KServeProxy(self).add_routes(app)
        app.on_startup.append(self._on_start)
        app.on_cleanup.append(self._on_stop)
        return app

    def admin_app(self) -> web.Application:
        """``/metrics``, ``/held/<namespace>`` and ``/healthz``: for Prometheus and the operator."""
        app = web.Application()
        self._add_admin_routes(app)
        app.router.add_get("/healthz", self._healthz)
        return app

    def _add_admin_routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/held/{namespace}", self._held)

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        admin_port: int | None = None,
        admin_host: str = "127.0.0.1",
    ) -> int:
        """Serve on ``host:port`` (0: a free port) with the idle timeouts; returns the port.

        A handler whose caller disconnects is cancelled, which closes its upstream request.
        With ``admin_port`` the metrics and held-request paths are served only there (so
        callers of the public port never see other tenants' model names); without it they
        are on the public port too (tests, development). ``admin_address`` is where it went.
        """
        self._runner = web.AppRunner(
            self.app(with_admin=admin_port is None),
            access_log=None,
            keepalive_timeout=self.config.keepalive_timeout_s,
            handler_cancellation=True,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, backlog=1024)
        await site.start()
        if admin_port is not None:
            self._admin_runner = web.AppRunner(self.admin_app(), access_log=None)
            await self._admin_runner.setup()
            await web.TCPSite(self._admin_runner, admin_host, admin_port).start()
            self.admin_address = self._admin_runner.addresses[0][:2]
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving and close upstream connections."""
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_start(self, _app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.config.upstream_connect_s, sock_read=self.config.upstream_read_s
        )
        # One pooled session for every upstream: keep-alive connections reused across
        # requests (idle ones closed after upstream_keepalive_s), no connection cap (the
        # tenants' concurrency limits bound what is in flight), no cookies kept between tenants.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=self.config.upstream_keepalive_s)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # no Accept-Encoding: the body is relayed as is (auto_decompress off) and read for usage
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        if self.config.pod_load_every_s > 0:
            self._scraper = PodLoadScraper(self.router, self.config.pod_load_every_s)
            self._scraper.start(self._session)
        if self._discovery is not None:
            loop = asyncio.get_running_loop()

            def apply(routes: list[ModelRoute]) -> None:  # called from the discovery thread
                loop.call_soon_threadsafe(self.set_routes, routes)

            self._discovery.start(apply)

    async def _on_stop(self, _app: web.Application) -> None:
        if self._scraper is not None:
            await self._scraper.stop()
        if self._discovery is not None:
            self._discovery.stop()
        if self._session is not None:
            await self._session.close()
        if isinstance(self._limiter, RedisLimiter):
            await self._limiter.close()

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _held(self, request: web.Request) -> web.Response:
        body = self.metrics.held_text(request.match_info["namespace"])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "models": len(self.router.routes())})

    # ---- one request -------------------------------------------------------
    def principal(self, request: web.Request) -> Principal:
        """Who the request's Bearer key belongs to; 401 for a missing, wrong or revoked key."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        principal = self._auth.authenticate(key.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            error = OpenAIError(
                401, "invalid or missing API key", type="authentication_error", code="invalid_api_key"
            )
            raise Refused(error, "auth")
        return principal

    def allowed_route(self, principal: Principal, model: str) -> ModelRoute:
        """The route of ``model`` if the principal's plan allows it; else 404 like a missing model."""
        route = self.router.lookup(model)
        if route is None or not principal.plan.models.allows(route.namespace, route.name, route.labels):
            raise Refused(not_found(model), "model_not_found")  # outside the plan reads the same
        return route

    async def _models(self, request: web.Request) -> web.Response:
        try:
            principal = self.principal(request)
        except Refused as refused:
            self.metrics.refused(refused.reason)
            return error_response(refused.error)
        data = [
            {"id": r.full_name, "object": "model", "created": 0, "owned_by": r.namespace}
            for r in self.router.routes()
            if principal.plan.models.allows(r.namespace, r.name, r.labels)
        ]
        return web.json_response({"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/completions", parse_completion)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/chat/completions", parse_chat)

    async def read_body(self, request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
        """The whole body, within ``limit`` bytes (413) and ``body_timeout_s`` (408)."""
        too_large = Refused(OpenAIError(413, f"request body is larger than {limit} bytes",
                                        code="body_too_large"), "body_too_large")
        if (request.content_length or 0) > limit:
            raise too_large
        try:
            async with asyncio.timeout(self.config.body_timeout_s):  # no extra task, unlike wait_for
                body = await read_within(request, limit)
        except TimeoutError as exc:
            error = OpenAIError(408, f"request body not received within {self.config.body_timeout_s:g}s",
                                code="request_timeout")
            raise Refused(error, "body_timeout") from exc
        if body is None:
            raise too_large
        return body

    async def _serve(
        self, request: web.Request, path: str, parse: Callable[[bytes], Any]
    ) -> web.StreamResponse:
        started = time.monotonic()
        model_label = UNKNOWN_MODEL
        status = 500
        try:
            principal = self.principal(request)
            body = await self.read_body(request)
            try:
                parsed = parse(body)
            except OpenAIError as exc:
                raise Refused(exc, "bad_request") from exc
            route = self.allowed_route(principal, parsed.model)
            model_label = route.full_name
            self.check_spend(principal)
            version = self.choose_version(route, request)
            prompt = parsed.prompt if path == "/v1/completions" else "".join(
                f"{m.role}\n{m.content}\n" for m in parsed.messages)
            estimate = estimate_tokens(len(prompt.encode()), parsed.max_tokens,
                                       self.config.default_max_tokens)
            ticket = await self.admit(principal, estimate)
        except Refused as refused:
            self.metrics.refused(refused.reason)
            self.metrics.answered(model_label, refused.error.status)
            return error_response(refused.error, refused.headers)
        try:
            forward: dict[str, Any] = msgspec.json.decode(body)
            forward["model"] = route.name  # the pod frontend serves its model by its bare name
            if parsed.stream:
                forward["stream_options"] = {"include_usage": True}
            response, outcome = await self._proxy(
                request, principal, route, version, path, forward, parsed, block_hashes(prompt), started
            )
            status = outcome.status
            tokens = outcome.tokens
            if tokens is not None:
                self.metrics.tokens.labels(model_label).inc(tokens)
                await maybe_await(self._limiter.settle(ticket, tokens))
            elif status != 200:
                await maybe_await(self._limiter.settle(ticket, 0))  # nothing was generated
            return response
        except asyncio.CancelledError:
            status = 499  # the caller went away (nginx's code for it); its upstream was closed
            raise
        finally:
            await self.release(ticket)
            self.metrics.answered(model_label, status, time.monotonic() - started)

    def choose_version(self, route: ModelRoute, request: web.Request) -> str:
        """The version for this request (pin, session, weights); 404 for an unknown pin."""
        pinned = request.headers.get(VERSION_HEADER)
        version = self.router.choose_version(route, pinned, request.headers.get(SESSION_HEADER))
        if version is None:
            error = OpenAIError(404, f"model '{route.full_name}' has no version '{pinned}'",
                                code="version_not_found")
            raise Refused(error, "version_not_found")
        return version

    async def admit(self, principal: Principal, estimate: int) -> Ticket:
        """Admit a request of ``estimate`` tokens under the tenant's limits, or 429."""
        got = await maybe_await(self._limiter.admit(principal.tenant, principal.plan, estimate))
        if isinstance(got, Refusal):
            error = OpenAIError(429, got.reason, type="rate_limit_error", code="rate_limit_exceeded")
            raise Refused(error, f"rate_{got.limit}", {"Retry-After": str(got.retry_after_s)})
        return got

    async def release(self, ticket: Ticket) -> None:
        """An admitted request is finished."""
        await maybe_await(self._limiter.release(ticket))

    def check_spend(self, principal: Principal) -> None:
        """402 when the tenant's month-to-date spend reached its plan's cap."""
        cap = principal.plan.monthly_spend_cap
        if cap is None or self._spend is None:
            return
        if self._spend.month_to_date(principal.tenant) >= cap:
            error = OpenAIError(402, "monthly spend cap reached", type="insufficient_quota",
                                code="spend_cap_reached")
            raise Refused(error, "spend_cap")

    async def _proxy(
        self,
        request: web.Request,
        principal: Principal,
        route: ModelRoute,
        version: str,
        path: str,
        forward: dict[str, Any],
        parsed: Any,
        hashes: list[int],
        started: float,
    ) -> tuple[web.StreamResponse, Outcome]:
        request_id = self._new_id()
        headers = {"Content-Type": "application/json", TENANT_HEADER: principal.tenant,
                   REQUEST_ID_HEADER: request_id}
        back = {REQUEST_ID_HEADER: request_id, VERSION_HEADER: version}
        data = msgspec.json.encode(forward)

        async def send(state: VersionState, url: str) -> tuple[web.StreamResponse, Outcome]:
            return await self._forward(request, url, path, data, headers, back, parsed)

        try:
            return await dispatch(self.router, self.holder, route, version, hashes, started, send)
        except Refused as refused:
            self.metrics.refused(refused.reason)
            return error_response(refused.error, {**back, **(refused.headers or {})}), Outcome(refused.error.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream %s for %s failed: %s", route.full_name, request_id, exc)
            error = OpenAIError(502, "the model's server could not be reached", type="api_error")
            return error_response(error, back), Outcome(502)

    async def _forward(
        self,
        request: web.Request,
        url: str,
        path: str,
        data: bytes,
        headers: dict[str, str],
        back: dict[str, str],
        parsed: Any,
    ) -> tuple[web.StreamResponse, Outcome]:
        async with self.session.post(url.rstrip("/") + path, data=data, headers=headers) as up:
            if not parsed.stream or up.status != 200:
                return await relay_whole(up, back)
            return await relay_stream(request, up, back, parsed.include_usage)
