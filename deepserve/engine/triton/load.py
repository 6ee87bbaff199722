"""How loaded the engine is: queued and running requests and KV-cache use (no torch).

The backend reports what it sees of each request (submitted, a chunk with its token
counts, finished); :meth:`EngineLoad.snapshot` gives the figures the Gateway API Inference
Extension's model-server protocol asks for. A request is *queued* until its first chunk
(the engine streams the first token at admission) and *running* after it until it ends;
KV-cache use is the tokens held by running requests over the cache's capacity
(slots x sequence length), a fraction in [0, 1].
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadSnapshot:
    """Queued and running request counts and the KV-cache fraction in use."""

    queued: int
    running: int
    kv_cache_usage: float


class EngineLoad:
    """Thread-safe request bookkeeping for one engine of ``capacity_tokens`` KV capacity."""

    def __init__(self, capacity_tokens: int) -> None:
        if capacity_tokens <= 0:
            raise ValueError("capacity_tokens must be positive")
        self.capacity_tokens = capacity_tokens
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._running: dict[str, int] = {}  # request id -> tokens in its cache slot

    def submitted(self, request_id: str) -> None:
        """A request entered the engine's queue."""
        with self._lock:
            self._queued.add(request_id)

    def progressed(self, request_id: str, prompt_tokens: int, generated_tokens: int) -> None:
        """A chunk of ``request_id`` came out: it holds prompt + generated tokens."""
        with self._lock:
            self._queued.discard(request_id)
            self._running[request_id] = prompt_tokens + generated_tokens

    def finished(self, request_id: str) -> None:
        """The request ended (any reason); it holds nothing any more."""
        with self._lock:
            self._queued.discard(request_id)
            self._running.pop(request_id, None)

    def snapshot(self) -> LoadSnapshot:
        """The current figures."""
        with self._lock:
            used = sum(self._running.values())
            return LoadSnapshot(len(self._queued), len(self._running),
                                min(1.0, used / self.capacity_tokens))
