"""Hold-and-wake: requests for a version with no Ready replica wait for one (scale from zero).

Folded from the former activator. A request that finds no Ready replica is held in a
bounded queue per version; while it waits, the gateway asks for a scale-up
(``scale_up(namespace, model, version)``, again every ``rescale_every_s``) and the request
goes on the moment discovery reports a Ready replica (the version's ``asyncio.Event``). A
full queue or a hold past ``hold_timeout_s`` (counted from the request's arrival) is 503
with ``Retry-After``. Cold-start time (first held request to first Ready replica) is
measured per version.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from deepserve.engine.openai_api import OpenAIError
from deepserve.operator.gateway.errors import Refused
from deepserve.operator.gateway.metrics import GatewayMetrics
from deepserve.operator.gateway.routing import VersionState

log = logging.getLogger(__name__)

ScaleUp = Callable[[str, str, str], Awaitable[None] | None]  # (namespace, model name, version)
HoldKey = tuple[str, str, str]  # (namespace, model name, version)


@dataclass(frozen=True)
class HoldConfig:
    """Bounds of the hold queue and its timings."""

    queue_limit: int = 100  # held requests per version
    hold_timeout_s: float = 120.0
    rescale_every_s: float = 2.0


def unavailable(message: str, code: str, reason: str) -> Refused:
    """The 503 (with ``Retry-After: 1``) a request gets that cannot be held any longer."""
    error = OpenAIError(503, message, type="service_unavailable", code=code)
    return Refused(error, reason, {"Retry-After": "1"})


class Holder:
    """Holds requests per version until a replica is Ready, asking for a scale-up meanwhile."""

    def __init__(self, config: HoldConfig, scale_up: ScaleUp | None, metrics: GatewayMetrics) -> None:
        self.config = config
        self.scale_up = scale_up
        self.metrics = metrics
        self.held: dict[HoldKey, int] = {}
        self.cold_starts: dict[HoldKey, deque[float]] = {}  # the last 100 per version
        self._cold_since: dict[HoldKey, float] = {}
        self._last_ask: dict[HoldKey, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def wait(self, key: HoldKey, state: VersionState, started: float) -> None:
        """Return once ``state`` has a Ready replica; raise the 503 on a full queue or timeout."""
        namespace, model, version = key
        if self.held.get(key, 0) >= self.config.queue_limit:
            raise unavailable(
                f"model '{namespace}/{model}' version '{version}' is starting and its queue is "
                f"full ({self.config.queue_limit} requests held); retry shortly",
                "model_starting",
                "hold_queue_full",
            )
        deadline = started + self.config.hold_timeout_s
        self._count(key, +1)
        self._cold_since.setdefault(key, time.monotonic())
        try:
            while not state.ready.is_set():
                self._ask_scale_up(key)
                wait = min(self.config.rescale_every_s, deadline - time.monotonic())
                if wait <= 0:
                    raise unavailable(
                        f"model '{namespace}/{model}' version '{version}': no replica became "
                        f"ready within {self.config.hold_timeout_s:g}s",
                        "model_not_ready",
                        "hold_timeout",
                    )
                try:
                    await asyncio.wait_for(state.ready.wait(), timeout=wait)
                except TimeoutError:
                    continue
            since = self._cold_since.pop(key, None)
            if since is not None:
                seconds = time.monotonic() - since
                self.cold_starts.setdefault(key, deque(maxlen=100)).append(seconds)
                self.metrics.cold_start.labels(*key).observe(seconds)
                log.info("%s/%s/%s: cold start took %.2fs", namespace, model, version, seconds)
        finally:
            self._count(key, -1)

    def _count(self, key: HoldKey, delta: int) -> None:
        left = self.held.get(key, 0) + delta
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)
        self.metrics.set_held(*key, max(left, 0))

    def _ask_scale_up(self, key: HoldKey) -> None:
        now = time.monotonic()
        if self.scale_up is None or now - self._last_ask.get(key, -1e9) < self.config.rescale_every_s:
            return
        self._last_ask[key] = now
        task = asyncio.create_task(self._call_scale_up(key))  # never delays the wait itself
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call_scale_up(self, key: HoldKey) -> None:
        assert self.scale_up is not None
        try:
            if inspect.iscoroutinefunction(self.scale_up):
                await self.scale_up(*key)
            else:
                await asyncio.to_thread(self.scale_up, *key)  # e.g. a blocking API write
        except Exception:  # the next ask retries; the request keeps waiting
            log.exception("%s/%s/%s: scale-up request failed", *key)
