"""The refusals the gateway answers itself (never reaching a model), and small I/O helpers."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from deepserve.engine.openai_api import OpenAIError


class Refused(Exception):
    """A request the gateway answers itself: the error, a metrics reason, extra headers."""

    def __init__(self, error: OpenAIError, reason: str, headers: dict[str, str] | None = None):
        super().__init__(error.message)
        self.error, self.reason, self.headers = error, reason, headers


def not_found(model: str) -> OpenAIError:
    """404 for a model that does not exist, or is outside the caller's plan (same body)."""
    return OpenAIError(404, f"the model '{model}' does not exist", param="model", code="model_not_found")


def error_response(exc: OpenAIError, headers: dict[str, str] | None = None) -> web.Response:
    """The OpenAI error JSON response for ``exc``."""
    return web.Response(
        status=exc.status, body=exc.body(), content_type="application/json", headers=headers
    )


async def maybe_await(value: Any) -> Any:
    """``value``, awaited when it is awaitable (the Redis limiter is async, the local one not)."""
    return await value if asyncio.iscoroutine(value) else value  # cheaper than inspect.isawaitable


async def read_within(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` bytes."""
    if request.content_length is not None and request.content_length <= limit:
        return await request.content.read()  # the parser stops at Content-Length: one call
    chunks, size = [], 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
