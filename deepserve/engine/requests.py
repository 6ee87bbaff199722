"""What a caller holds for one engine request: its streamed chunks, final stats, cancel."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RequestStats:
    """Timing and token counts of one finished request."""

    prompt_tokens: int
    generated_tokens: int
    started_at: datetime
    ended_at: datetime
    time_to_first_token_s: float | None
    time_per_output_token_s: float | None

    @property
    def compute_ms(self) -> int:
        """Wall time from admission to the end, in milliseconds."""
        return int((self.ended_at - self.started_at).total_seconds() * 1000)


@dataclass
class GenerationChunk:
    """A piece of streamed output; the last one has ``finished`` set and ``stats``."""

    request_id: str
    text: str
    prompt_tokens: int
    generated_tokens: int
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None
    stats: RequestStats | None = None
    token_ids: list[int] | None = None  # final chunk: every generated id (including eos)
    precision: str | None = None  # final chunk: the least precise compute that served it
    reused_prompt_tokens: int = 0  # final chunk: prompt tokens taken from the prefix cache
    adapter: str | None = None  # final chunk: the LoRA adapter that served it (None: base)


ChunkCallback = Callable[[GenerationChunk], None]


class RequestHandle:
    """The caller's side of a request: iterate its chunks, read the result, or cancel it."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._chunks: collections.deque[GenerationChunk] = collections.deque()
        self._cond = threading.Condition()
        self._cancelled = False
        self.final: GenerationChunk | None = None

    def cancel(self) -> None:
        """Ask the engine to stop this request at its next step."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled

    def _put(self, chunk: GenerationChunk) -> None:
        with self._cond:
            self._chunks.append(chunk)
            if chunk.finished:
                self.final = chunk
            self._cond.notify_all()

    def __iter__(self) -> Iterator[GenerationChunk]:
        """Yield chunks as they arrive (blocks; needs the engine thread or another driver)."""
        while True:
            with self._cond:
                while not self._chunks:
                    self._cond.wait()
                chunk = self._chunks.popleft()
            yield chunk
            if chunk.finished:
                return

    def drain(self) -> list[GenerationChunk]:
        """Return the chunks received so far without blocking."""
        with self._cond:
            chunks = list(self._chunks)
            self._chunks.clear()
        return chunks
