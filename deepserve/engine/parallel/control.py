"""Rank 0 drives the other ranks of its replica, one broadcast per step.

The serving rank runs the ordinary :class:`~deepserve.engine.runtime.InferenceEngine`
(continuous batching, streaming, precision scheduling, prefix cache) untouched:
:func:`attach_leader` wraps its model's ``forward`` and its prefix cache so every forward
pass (tokens, positions, slots, the precision in use) and every prefix restore/store is
broadcast to the other ranks before rank 0 runs it. :func:`follow` is the other ranks'
loop: it replays each message on their shard, so the collectives inside the forward pass
(TP all-reduces, pipeline sends) line up. Messages travel on a gloo group of their own
(CPU objects, also when the model's group is NCCL); while rank 0 is idle it sends a
heartbeat so that a follower's receive only times out when rank 0 is really gone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from deepserve.engine.runtime import InferenceEngine

log = logging.getLogger(__name__)


class RankFailure(RuntimeError):
    """A rank of the replica died or diverged; the replica cannot serve any more."""


def _moved(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


class ControlChannel:
    """Ordered messages from rank 0 to every rank of ``group`` (a broadcast each)."""

    def __init__(self, group: Any, heartbeat_s: float = 1.0) -> None:
        self.group = group
        self.heartbeat_s = heartbeat_s
        self.lock = threading.RLock()  # one message (and the forward it announces) at a time
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        self._last_sent = time.monotonic()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def fail(self, reason: str) -> None:
        """Record the first failure and tell ``on_failure`` (the supervisor's handler)."""
        if self.failure is not None:
            return
        self.failure = reason
        log.error("replica failed: %s", reason)
        if self.on_failure is not None:
            self.on_failure(reason)

    def send(self, message: tuple[Any, ...]) -> None:
        """Broadcast ``message`` from rank 0; raises :class:`RankFailure` once broken."""
        with self.lock:
            if self.failure is not None:
                raise RankFailure(self.failure)
            try:
                dist.broadcast_object_list([message], src=0, group=self.group)
            except Exception as exc:
                self.fail(f"broadcast to the other ranks failed: {exc}")
                raise RankFailure(str(exc)) from exc
            self._last_sent = time.monotonic()

    def receive(self) -> tuple[Any, ...]:
        """The next message from rank 0 (followers); raises on timeout or a dead rank 0."""
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return tuple(box[0])

    def start_heartbeat(self) -> None:
        """Send ``("noop",)`` whenever rank 0 has been silent for ``heartbeat_s``."""
        self._beat = threading.Thread(target=self._heartbeat, name="deepserve-rank-heartbeat",
                                      daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s / 2):
            if self.failure is not None:
                return
            if time.monotonic() - self._last_sent < self.heartbeat_s:
                continue
            try:
                self.send(("noop",))
            except RankFailure:
                return

    def close(self) -> None:
        """Stop the heartbeat and tell the followers to exit (when still healthy)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self.failure is None:
            with contextlib.suppress(RankFailure):
                self.send(("stop",))


def attach_leader(engine: InferenceEngine, channel: ControlChannel) -> None:
    """Make rank 0's engine announce each forward pass and prefix-cache operation."""
    model, features = engine.model, engine.features
    forward = model.forward

    def announced_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        handle = features.precision_handle
        precision = handle.state.current if handle is not None else None
        with channel.lock:
            channel.send(("forward", precision, _moved(args, "cpu"), _moved(kwargs, "cpu")))
            return forward(*args, **kwargs)

    model.forward = announced_forward  # type: ignore[method-assign]
    cache = features.prefix_cache
    if cache is not None:
        restore, store = cache.restore, cache.store

        def announced_restore(slot: int, token_ids: Any) -> int:
            with channel.lock:
                reused = restore(slot, token_ids)
                channel.send(("restore", slot, list(token_ids), reused))
                return reused

        def announced_store(slot: int, token_ids: Any) -> int:
            with channel.lock:
                channel.send(("store", slot, list(token_ids)))
                return store(slot, token_ids)

        cache.restore = announced_restore  # type: ignore[method-assign]
        cache.store = announced_store  # type: ignore[method-assign]
    channel.start_heartbeat()


def follow(engine: InferenceEngine, channel: ControlChannel) -> int:
    """Replay rank 0's messages on this rank until ``stop``; returns the messages handled.

    Raises :class:`RankFailure` when this rank's prefix cache disagrees with rank 0's
    (the ranks would compute different things), and whatever the collective raises when
    rank 0 is gone or silent past the group's timeout.
    """
    model, features = engine.model, engine.features
    handled = 0
    while True:
        message = channel.receive()
        handled += 1
        kind = message[0]
        if kind == "noop":
            continue
        if kind == "stop":
            return handled
        if kind == "forward":
            _, precision, args, kwargs = message
            with torch.inference_mode(), features.compute(precision or features.precision):
                model(*_moved(args, engine.device), **_moved(kwargs, engine.device))
        elif kind in ("restore", "store"):
            cache = features.prefix_cache
            if cache is None:
                raise RankFailure(f"rank 0 uses a prefix cache ({kind}) and this rank has none")
            if kind == "store":
                cache.store(message[1], message[2])
                continue
            reused = cache.restore(message[1], message[2])
            if reused != message[3]:
                raise RankFailure(f"prefix cache diverged: rank 0 reused {message[3]} tokens, "
                                  f"this rank {reused}")
        else:
            raise RankFailure(f"unknown control message {kind!r}")
