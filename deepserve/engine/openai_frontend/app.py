"""The aiohttp app of the pod frontend: OpenAI Completions and Chat on the pod's Triton.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streamed as Server-Sent
Events ending ``data: [DONE]`` or answered whole; ``usage`` on every answer and, with
``stream_options.include_usage``, a last usage chunk), ``GET /v1/models``, ``GET /health``
(200 only when Triton and the model are ready) and ``GET /metrics`` (the inference-gateway
gauges, :mod:`.metrics`). Request validation and response shapes are
:mod:`deepserve.engine.openai_api`'s, the same as the gateway's. The tenant comes from the
``X-Deepserve-Tenant`` header the gateway sets (only the gateway reaches this port) and is
passed to the engine for the usage event; ``X-Request-Id`` becomes the Triton request id.
Run with ``handler_cancellation=True`` (see :func:`serve`): a client that goes away
cancels its handler, which cancels the Triton request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from deepserve.engine import openai_api as oa
from deepserve.engine.openai_frontend.metrics import engine_gauges, render_gauges
from deepserve.engine.openai_frontend.triton_stream import (
    EngineError,
    EngineRequest,
    Piece,
    TritonGenerator,
)

log = logging.getLogger(__name__)
TENANT_HEADER, REQUEST_ID_HEADER = "X-Deepserve-Tenant", "X-Request-Id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# the OpenAI parameter a Triton input stands for, per endpoint
_PARAM = {"text_input": "prompt", "chat_messages": "messages", "tenant": None}
GENERATOR, MODEL, METRICS_URL = (web.AppKey("generator", TritonGenerator), web.AppKey("model", str),
                                 web.AppKey("metrics_url", str))


def _error(exc: oa.OpenAIError) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type="application/json")


def _openai_error(exc: EngineError, chat: bool) -> oa.OpenAIError:
    if not exc.invalid:
        return oa.OpenAIError(500, f"the engine failed: {exc.message}", type="server_error")
    param = _PARAM.get(exc.field or "", exc.field)
    if chat and param == "prompt":
        param = "messages"
    return oa.OpenAIError(400, f"{param or exc.field}: {exc.message}", param=param)


async def _read_body(request: web.Request) -> bytes:
    if (request.content_length or 0) > oa.MAX_BODY_BYTES:
        raise oa.OpenAIError(413, f"request body is larger than {oa.MAX_BODY_BYTES} bytes",
                             code="body_too_large")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise oa.OpenAIError(413, f"request body is larger than {oa.MAX_BODY_BYTES} bytes",
                             code="body_too_large") from exc


def _engine_request(request: web.Request, req: Any, prompt: str | None,
                    messages: list[dict[str, str]] | None) -> EngineRequest:
    if req.model != request.app[MODEL]:
        raise oa.OpenAIError(404, f"The model '{req.model}' does not exist", param="model",
                             code="model_not_found")
    tenant = request.headers.get(TENANT_HEADER) or None
    if tenant is not None and (len(tenant) > 128 or not tenant.isprintable()):
        raise oa.OpenAIError(400, f"{TENANT_HEADER} must be at most 128 printable characters")
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
    fmt = req.output_format()
    return EngineRequest(request_id, prompt, messages, req.max_tokens, req.temperature, req.top_p,
                         req.seed, req.stop_list(), tenant, fmt.to_json() if fmt else None)


async def _first(pieces: AsyncIterator[Piece], chat: bool) -> Piece:
    try:
        return await pieces.__anext__()
    except EngineError as exc:
        raise _openai_error(exc, chat) from exc


async def _answer(request: web.Request, req: Any, ereq: EngineRequest, chat: bool) -> web.StreamResponse:
    pieces = request.app[GENERATOR].generate(ereq)
    try:
        first = await _first(pieces, chat)
        rid = ("chatcmpl-" if chat else "cmpl-") + ereq.request_id
        if not req.stream:
            return await _whole(req, rid, first, pieces, chat)
        return await _stream(request, req, rid, first, pieces, chat)
    finally:
        await pieces.aclose()  # cancels the Triton request if it is still running


async def _whole(req: Any, rid: str, first: Piece, pieces: AsyncIterator[Piece], chat: bool) -> web.Response:
    texts, last = [first.text], first
    try:
        while not last.finish_reason:
            last = await pieces.__anext__()
            texts.append(last.text)
    except EngineError as exc:
        raise _openai_error(exc, chat) from exc
    build = oa.chat_response if chat else oa.completion_response
    body = build(rid, req.model, "".join(texts), last.finish_reason or "stop",
                 last.prompt_tokens, last.generated_tokens)
    return web.json_response(body, headers={REQUEST_ID_HEADER: rid.split("-", 1)[1]})


async def _stream(request: web.Request, req: Any, rid: str, first: Piece,
                  pieces: AsyncIterator[Piece], chat: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       REQUEST_ID_HEADER: rid.split("-", 1)[1]})
    await resp.prepare(request)
    chunk: Callable[..., dict[str, Any]] = oa.chat_chunk if chat else oa.completion_chunk
    piece = first
    try:
        while True:
            if piece.text or piece.finish_reason:
                await resp.write(oa.sse_event(chunk(rid, req.model, piece.text, piece.finish_reason)))
            if piece.finish_reason:
                break
            piece = await pieces.__anext__()
    except EngineError as exc:  # headers are gone: report in the stream, no [DONE]
        await resp.write(b"data: " + _openai_error(exc, chat).body() + b"\n\n")
        return resp
    if req.include_usage:
        usage = oa.usage(piece.prompt_tokens, piece.generated_tokens)
        await resp.write(oa.sse_event(chunk(rid, req.model, "", None, usage)))
    await resp.write(oa.DONE_EVENT)
    await resp.write_eof()
    return resp


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions``."""
    try:
        req = oa.parse_completion(await _read_body(request))
        return await _answer(request, req, _engine_request(request, req, req.prompt, None), False)
    except oa.OpenAIError as exc:
        return _error(exc)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    try:
        req = oa.parse_chat(await _read_body(request))
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        return await _answer(request, req, _engine_request(request, req, None, messages), True)
    except oa.OpenAIError as exc:
        return _error(exc)


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the one model this pod serves."""
    model = request.app[MODEL]
    return web.json_response({"object": "list", "data": [
        {"id": model, "object": "model", "created": int(time.time()), "owned_by": "deepserve"}]})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: 200 when Triton and the model are ready, else 503."""
    ready = await request.app[GENERATOR].ready()
    return web.json_response({"status": "ok" if ready else "unavailable"}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the Gateway API Inference Extension model-server gauges."""
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(request.app[METRICS_URL]) as resp:
            page = await resp.text()
    except (TimeoutError, aiohttp.ClientError):
        return web.Response(status=503, text="triton metrics unreachable\n")
    model = request.app[MODEL]
    return web.Response(text=render_gauges(model, engine_gauges(page, model)),
                        content_type="text/plain", charset="utf-8")


@web.middleware
async def _no_500s(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error on %s", request.path)
        return _error(oa.OpenAIError(500, "internal error", type="server_error"))


def build_app(generator: TritonGenerator, model: str, metrics_url: str) -> web.Application:
    """The frontend app for ``model`` served by ``generator``."""
    app = web.Application(client_max_size=oa.MAX_BODY_BYTES, middlewares=[_no_500s])
    app[GENERATOR], app[MODEL], app[METRICS_URL] = generator, model, metrics_url
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)

    async def close(_: web.Application) -> None:
        await generator.close()

    app.on_cleanup.append(close)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving ``app`` (client disconnects cancel their handler); return the runner."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
