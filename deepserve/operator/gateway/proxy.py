"""Relaying one upstream response to the caller, learning the token usage on the way.

Non-streaming responses are passed through whole; their ``usage`` is read for the token
limit. Streams are relayed event by event: the usage chunk (forced upstream) is read and,
unless the caller asked for it, dropped. When the caller goes away mid-stream the write
fails, and the upstream response is closed at once, so the pod sees the connection drop and
stops generating.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
import msgspec
from aiohttp import web

from deepserve.engine.openai_api import DONE_EVENT

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
VERSION_HEADER = "X-Deepserve-Version"


@dataclass
class Outcome:
    """What a relayed response told the gateway: status, tokens used, whether the caller left."""

    status: int
    tokens: int | None = None  # prompt + completion, from the upstream's usage
    caller_left: bool = False


class _Usage(msgspec.Struct):
    total_tokens: int | None = None


class _WithUsage(msgspec.Struct):
    """Only the ``usage`` of a response body: msgspec skips every other field unbuilt."""

    usage: _Usage | None = None


def _total_tokens(usage: object) -> int | None:
    if isinstance(usage, dict):
        total = usage.get("total_tokens")
        if isinstance(total, int):
            return total
    return None


async def relay_whole(
    upstream: aiohttp.ClientResponse, headers: dict[str, str]
) -> tuple[web.Response, Outcome]:
    """Pass a non-streaming (or failed) upstream response through whole."""
    payload = await upstream.read()
    tokens = None
    if upstream.status == 200:
        try:
            usage = msgspec.json.decode(payload, type=_WithUsage).usage
            tokens = usage.total_tokens if usage is not None else None
        except msgspec.DecodeError:  # also ValidationError: not an object, usage of another shape
            tokens = None
    response = web.Response(
        status=upstream.status,
        body=payload,
        content_type=upstream.content_type,
        headers=headers,
    )
    return response, Outcome(upstream.status, tokens)


async def relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    include_usage: bool,
) -> tuple[web.StreamResponse, Outcome]:
    """Relay an SSE stream; drop the forced usage chunk unless the caller asked for usage."""
    out = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
    )
    outcome = Outcome(200)
    try:
        await out.prepare(request)
        async for line in upstream.content:
            if not line.startswith(b"data: "):
                continue
            event = line.rstrip(b"\r\n") + b"\n\n"
            if event == DONE_EVENT:
                await out.write(event)
                break
            chunk = msgspec.json.decode(event[6:])
            tokens = _total_tokens(chunk.get("usage"))
            if tokens is not None:
                outcome.tokens = tokens
            if not chunk.get("choices") and tokens is not None and not include_usage:
                continue  # usage was forced upstream for the limits; the caller did not ask
            if not include_usage and "usage" in chunk:
                chunk.pop("usage")
                event = b"data: " + msgspec.json.encode(chunk) + b"\n\n"
            await out.write(event)
        await out.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
        outcome.caller_left = True
        upstream.close()  # the pod sees the drop now, not when it finishes generating
        log.info("caller left stream %s (%s); upstream closed", headers.get(REQUEST_ID_HEADER), exc)
    return out, outcome
