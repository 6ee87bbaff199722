"""Scraping the pods' load gauges (Gateway API Inference Extension model-server protocol).

Each engine pod's OpenAI frontend publishes, on ``GET /metrics``, the gauges the protocol
asks of a model server under vLLM's names: ``vllm:num_requests_waiting`` (queued) and
``vllm:kv_cache_usage_perc`` (KV-cache use, 0..1). Every ``every_s`` the scraper reads them
from every Ready replica (parsed with prometheus_client's parser, ``timeout_s`` each, all at
once) into ``Router.pod_load``; a replica that does not answer is dropped from it, so stale
figures never steer traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from deepserve.operator.gateway.routing import Router

log = logging.getLogger(__name__)

QUEUED = "vllm:num_requests_waiting"
KV_USE = "vllm:kv_cache_usage_perc"


def parse_load(text: str) -> tuple[float, float] | None:
    """(queued, KV-cache use) summed over the page's models; None when neither is there."""
    queued = kv = 0.0
    seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == QUEUED:
                queued += sample.value
                seen = True
            elif sample.name == KV_USE:
                kv = max(kv, sample.value)
                seen = True
    return (queued, kv) if seen else None


class PodLoadScraper:
    """Keeps ``router.pod_load`` fresh while running (``start``/``stop`` on the gateway's loop)."""

    def __init__(self, router: Router, every_s: float = 1.0, timeout_s: float = 0.5) -> None:
        self.router, self.every_s, self.timeout_s = router, every_s, timeout_s
        self._task: asyncio.Task[None] | None = None

    async def scrape_once(self, session: aiohttp.ClientSession) -> None:
        """Read every Ready replica's gauges once and replace ``router.pod_load``."""
        replicas = self.router.replicas()
        results = await asyncio.gather(*[self._one(session, u) for u in replicas])
        self.router.pod_load = {u: load for u, load in zip(replicas, results, strict=True) if load is not None}

    async def _one(self, session: aiohttp.ClientSession, url: str) -> tuple[float, float] | None:
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with session.get(url.rstrip("/") + "/metrics", timeout=timeout) as r:
                if r.status != 200:
                    return None
                return parse_load(await r.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("load of %s not read: %s", url, exc)
            return None

    def start(self, session: aiohttp.ClientSession) -> None:
        """Scrape every ``every_s`` until :meth:`stop`."""

        async def loop() -> None:
            while True:
                await self.scrape_once(session)
                await asyncio.sleep(self.every_s)

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        """Stop scraping."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
