"""Stand-ins the gateway command talks to in tests: an OpenAI engine pod and a spend endpoint.

Both are real HTTP servers on loopback in a background thread; the pod follows the pod
frontend's protocol (chat, stream with usage, [DONE]) and the billing one the spend
endpoint's contract (``GET /v1/tenants/<t>/spend?month=YYYY-MM`` with a bearer token).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import msgspec
from aiohttp import web

from deepserve.engine.openai_api import DONE_EVENT, chat_chunk, chat_response, sse_event, usage

WORDS = ["Hello", " from", " the", " pod"]


class LoopThread:
    """An asyncio loop in a daemon thread serving aiohttp apps on 127.0.0.1."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def serve(self, app: web.Application) -> str:
        async def start() -> str:
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            return f"http://127.0.0.1:{runner.addresses[0][1]}"

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            for r in self.runners:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def pod_app(seen: list[dict[str, Any]]) -> web.Application:
    """A pod frontend: records headers it got, answers chat (stream or not) with usage."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        seen.append(dict(request.headers))
        if not body.get("stream"):
            return web.json_response(chat_response("c1", body["model"], "".join(WORDS), "stop", 5, 4))
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i, w in enumerate(WORDS):
            await out.write(sse_event(chat_chunk("c1", body["model"], w,
                                                 "stop" if i == len(WORDS) - 1 else None)))
        if body.get("stream_options", {}).get("include_usage"):
            await out.write(sse_event(chat_chunk("c1", body["model"], "", None, usage(5, 4))))
        await out.write(DONE_EVENT)
        return out

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def billing_app(token: str, amounts: dict[str, str]) -> web.Application:
    """The spend endpoint's contract, amounts per tenant set by the test."""

    async def spend(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        tenant = request.match_info["tenant"]
        return web.json_response({"tenant": tenant, "month": request.query.get("month", ""),
                                  "currency": "USD", "amount": amounts.get(tenant, "0")})

    app = web.Application()
    app.router.add_get("/v1/tenants/{tenant}/spend", spend)
    return app
