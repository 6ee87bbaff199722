"""KServe v2 (Triton HTTP) paths behind the same keys, plans, limits and hold-and-wake.

``/v2/models/<namespace>/<name>[/<rest>]`` (``infer``, ``generate``, ``generate_stream``,
``ready``, metadata) is forwarded to ``/v2/models/<name>[/<rest>]`` on the chosen replica's
KServe base URL (``http://<podIP>:8000``), with only ``Content-Type``, ``X-Deepserve-Tenant``
and ``X-Request-Id`` upstream. The response (status, body, streams) passes through; errors
the gateway answers itself use KServe's shape ``{"error": "<message>"}``. Requests/min and
concurrency apply; tokens/min does not (a tensor request carries no token count).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from deepserve.operator.gateway.dispatch import dispatch
from deepserve.operator.gateway.errors import Refused
from deepserve.operator.gateway.metrics import UNKNOWN_MODEL
from deepserve.operator.gateway.proxy import REQUEST_ID_HEADER, VERSION_HEADER
from deepserve.operator.gateway.routing import VersionState

if TYPE_CHECKING:
    from deepserve.operator.gateway.server import Gateway

log = logging.getLogger(__name__)

# Tensors are larger than chat prompts, but the body reaches Triton's HTTP JSON parser as is:
# it recurses per nesting level and, even with the pod's 1 GiB stack, ~20M levels (40 MB of
# "[") crash it while 10M are refused cleanly (docs/engine.md). 8 MiB keeps any body below that.
KSERVE_MAX_BODY_BYTES = 8 * 1024 * 1024
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length"}


def _kserve_error(refused: Refused, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": refused.error.message}, status=refused.error.status,
                             headers={**(headers or {}), **(refused.headers or {})})


class KServeProxy:
    """The ``/v2/models/...`` handler of a :class:`Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def add_routes(self, app: web.Application) -> None:
        """Register the v2 paths on ``app``."""
        app.router.add_route("*", "/v2/models/{namespace}/{name}", self.handle)
        app.router.add_route("*", "/v2/models/{namespace}/{name}/{rest:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Authenticate, check plan and limits, pick a replica (holding if none), forward."""
        gw, started = self.gw, time.monotonic()
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        rest = request.match_info.get("rest", "")
        label = UNKNOWN_MODEL
        try:
            principal = gw.principal(request)
            route = gw.allowed_route(principal, f"{namespace}/{name}")
            label = route.full_name
            gw.check_spend(principal)
            version = gw.choose_version(route, request)
            body = await gw.read_body(request, KSERVE_MAX_BODY_BYTES) if request.body_exists else b""
            ticket = await gw.admit(principal, 0)
        except Refused as refused:
            gw.metrics.refusals.labels(refused.reason).inc()
            gw.metrics.requests.labels(label, str(refused.error.status)).inc()
            return _kserve_error(refused)
        request_id = gw.new_request_id()
        headers = {"X-Deepserve-Tenant": principal.tenant, REQUEST_ID_HEADER: request_id}
        if request.content_type and body:
            headers["Content-Type"] = request.content_type
        back = {REQUEST_ID_HEADER: request_id, VERSION_HEADER: version}
        path = f"/v2/models/{name}" + (f"/{rest}" if rest else "")
        if request.query_string:
            path += "?" + request.query_string

        async def send(state: VersionState, url: str) -> web.StreamResponse:
            base = state.kserve.get(url)
            if base is None:
                raise aiohttp.InvalidURL(f"replica {url} has no KServe endpoint")
            return await self._forward(request, base + path, body, headers, back)

        status = 500
        try:
            response = await dispatch(gw.router, gw.holder, route, version, [], started, send)
            status = response.status
            return response
        except Refused as refused:
            gw.metrics.refusals.labels(refused.reason).inc()
            status = refused.error.status
            return _kserve_error(refused, back)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream %s for %s failed: %s", route.full_name, request_id, exc)
            status = 502
            return web.json_response({"error": "the model's server could not be reached"}, status=502,
                                     headers=back)
        finally:
            await gw.release(ticket)
            gw.metrics.requests.labels(label, str(status)).inc()
            gw.metrics.latency.labels(label).observe(time.monotonic() - started)

    async def _forward(self, request: web.Request, url: str, body: bytes, headers: dict[str, str],
                       back: dict[str, str]) -> web.StreamResponse:
        async with self.gw.session.request(request.method, url, data=body or None, headers=headers) as up:
            out = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in _HOP:
                    out.headers[k] = v
            out.headers.update(back)
            if up.content_length is not None and "chunked" not in up.headers.get("Transfer-Encoding", ""):
                out.content_length = up.content_length
            try:
                await out.prepare(request)
                async for chunk in up.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                up.close()  # the caller left: stop the pod's work now
            return out
