"""The gateway's aiohttp app: authenticate, check the plan and limits, proxy OpenAI requests.

Nothing reaches an upstream before the key, the plan's model list and the limits all pass.
Upstream requests carry only headers the gateway builds itself (so a caller's
``X-Deepserve-*`` or hop-by-hop headers never pass), plus ``X-Deepserve-Tenant`` and
``X-Request-Id``. Streams force ``stream_options.include_usage`` upstream so the gateway
learns the token count; the usage chunk reaches the caller only when the caller asked.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from deepserve.engine.openai_api import (
    DONE_EVENT,
    MAX_BODY_BYTES,
    OpenAIError,
    parse_chat,
    parse_completion,
)
from deepserve.operator.gateway.limits import TenantLimiter
from deepserve.operator.tenancy import Authenticator, Principal, SpendSource

log = logging.getLogger(__name__)

TENANT_HEADER = "X-Deepserve-Tenant"
REQUEST_ID_HEADER = "X-Request-Id"


@dataclass(frozen=True)
class ModelRoute:
    """One servable model: ``namespace/name``, its aliases and labels, and its upstream URL."""

    namespace: str
    name: str
    upstream: str  # e.g. http://<podIP>:9000
    labels: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


def _error(exc: OpenAIError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=exc.status, body=exc.body(), content_type="application/json", headers=headers
    )


class Gateway:
    """The OpenAI front door for a fixed set of routes; ``app()`` builds the aiohttp app."""

    def __init__(
        self,
        authenticator: Authenticator,
        routes: list[ModelRoute],
        spend: SpendSource | None = None,
        limiter: TenantLimiter | None = None,
        new_request_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._auth = authenticator
        self._spend = spend
        self._limiter = limiter or TenantLimiter()
        self._new_id = new_request_id
        self._routes: dict[str, ModelRoute] = {}
        for route in routes:
            for key in (route.full_name, *route.aliases):
                self._routes[key] = route
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        """The aiohttp application (body limit one byte over ``MAX_BODY_BYTES`` -> 413)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=5))

    async def _stop(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def _principal(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        principal = self._auth.authenticate(key.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise OpenAIError(
                401,
                "invalid or missing API key",
                type="authentication_error",
                code="invalid_api_key",
            )
        return principal

    def _route(self, principal: Principal, model: str) -> ModelRoute:
        route = self._routes.get(model)
        if route is None or not principal.plan.models.allows(
            route.namespace, route.name, route.labels
        ):
            # Outside the plan reads exactly like a model that does not exist.
            raise OpenAIError(
                404, f"the model '{model}' does not exist", param="model", code="model_not_found"
            )
        return route

    async def _models(self, request: web.Request) -> web.Response:
        try:
            principal = self._principal(request)
        except OpenAIError as exc:
            return _error(exc)
        seen = {r.full_name: r for r in self._routes.values()}
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": r.namespace}
            for name, r in sorted(seen.items())
            if principal.plan.models.allows(r.namespace, r.name, r.labels)
        ]
        return web.json_response({"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/completions", parse_completion)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "/v1/chat/completions", parse_chat)

    async def _serve(
        self, request: web.Request, path: str, parse: Callable[[bytes], Any]
    ) -> web.StreamResponse:
        try:
            principal = self._principal(request)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                raise OpenAIError(
                    413,
                    f"request body is larger than {MAX_BODY_BYTES} bytes",
                    code="body_too_large",
                ) from exc
            parsed = parse(body)
            route = self._route(principal, parsed.model)
            self._check_spend(principal)
        except OpenAIError as exc:
            return _error(exc)
        plan = principal.plan
        refusal = self._limiter.admit(principal.tenant, plan)
        if refusal is not None:
            limited = OpenAIError(
                429, refusal.reason, type="rate_limit_error", code="rate_limit_exceeded"
            )
            return _error(limited, {"Retry-After": str(refusal.retry_after_s)})
        try:
            forward: dict[str, Any] = msgspec.json.decode(body)
            forward["model"] = route.full_name
            if parsed.stream:
                forward["stream_options"] = {"include_usage": True}
            return await self._proxy(request, principal, route, path, forward, parsed)
        finally:
            self._limiter.release(principal.tenant)

    def _check_spend(self, principal: Principal) -> None:
        cap = principal.plan.monthly_spend_cap
        if cap is None or self._spend is None:
            return
        if self._spend.month_to_date(principal.tenant) >= cap:
            raise OpenAIError(
                402,
                "monthly spend cap reached",
                type="insufficient_quota",
                code="spend_cap_reached",
            )

    async def _proxy(
        self,
        request: web.Request,
        principal: Principal,
        route: ModelRoute,
        path: str,
        forward: dict[str, Any],
        parsed: Any,
    ) -> web.StreamResponse:
        assert self._session is not None
        request_id = self._new_id()
        headers = {
            "Content-Type": "application/json",
            TENANT_HEADER: principal.tenant,
            REQUEST_ID_HEADER: request_id,
        }
        url = route.upstream.rstrip("/") + path
        try:
            async with self._session.post(
                url, data=msgspec.json.encode(forward), headers=headers
            ) as upstream:
                if not parsed.stream or upstream.status != 200:
                    payload = await upstream.read()
                    return web.Response(
                        status=upstream.status,
                        body=payload,
                        content_type=upstream.content_type,
                        headers={REQUEST_ID_HEADER: request_id},
                    )
                return await self._relay_stream(request, upstream, request_id, parsed.include_usage)
        except aiohttp.ClientError as exc:
            log.warning("upstream %s for %s failed: %s", route.full_name, request_id, exc)
            return _error(
                OpenAIError(502, "the model's server could not be reached", type="api_error"),
                {REQUEST_ID_HEADER: request_id},
            )

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        request_id: str,
        include_usage: bool,
    ) -> web.StreamResponse:
        out = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                REQUEST_ID_HEADER: request_id,
            }
        )
        await out.prepare(request)
        async for line in upstream.content:
            if not line.startswith(b"data: "):
                continue
            event = line.rstrip(b"\r\n") + b"\n\n"
            if event == DONE_EVENT:
                await out.write(event)
                break
            chunk = msgspec.json.decode(event[6:])
            if not chunk.get("choices") and chunk.get("usage") and not include_usage:
                continue  # usage was forced upstream for billing; the caller did not ask
            if not include_usage:
                chunk.pop("usage", None)
                event = b"data: " + msgspec.json.encode(chunk) + b"\n\n"
            await out.write(event)
        await out.write_eof()
        return out
