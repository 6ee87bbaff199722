"""Shared test parts: an in-memory Authenticator and a fake engine pod speaking OpenAI."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from typing import Any

import msgspec
import openai
from aiohttp import web
from multidict import CIMultiDict

from deepserve.engine.openai_api import (
    DONE_EVENT,
    chat_chunk,
    completion_chunk,
    completion_response,
    sse_event,
    usage,
)
from deepserve.operator.tenancy import Principal

KEY_A = "ds-aaaaaaaaaaaa-secretA"
KEY_B = "ds-bbbbbbbbbbbb-secretB"


class MemoryKeys:
    """A tiny Authenticator: exact keys, compared in constant time."""

    def __init__(self, keys: dict[str, Principal]) -> None:
        self.keys = keys

    def authenticate(self, presented_key: str) -> Principal | None:
        found = None
        for key, principal in self.keys.items():
            if hmac.compare_digest(key.encode(), presented_key.encode()):
                found = principal
        return found


@dataclass
class FakePod:
    """Speaks the pod's OpenAI protocol, says who it is, and records what reached it."""

    name: str = "pod"
    seen: list[tuple[CIMultiDict[str], dict[str, Any]]] = field(default_factory=list)
    hold: asyncio.Event | None = None
    endless: bool = False  # stream tokens until the caller goes away
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        self.seen.append((request.headers.copy(), body))
        if self.hold is not None:
            await self.hold.wait()
        words = ["hello", " world"]
        if not body.get("stream"):
            return web.json_response(
                completion_response(self.name, body["model"], "".join(words), "stop", 3, 2)
            )
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        chunk = chat_chunk if request.path.endswith("chat/completions") else completion_chunk
        try:
            while self.endless:
                await out.write(sse_event(chunk("c1", body["model"], "tok", None)))
                await asyncio.sleep(0.02)
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        for i, w in enumerate(words):
            await out.write(sse_event(chunk("c1", body["model"], w, "stop" if i else None)))
        if body.get("stream_options", {}).get("include_usage"):
            await out.write(sse_event(chunk("c1", body["model"], "", None, usage(3, 2))))
        await out.write(DONE_EVENT)
        return out

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on a free port of 127.0.0.1."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def client(url: str, key: str = KEY_A, **kw: Any) -> openai.AsyncOpenAI:
    """The real openai client against the gateway at ``url``."""
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, **kw)
