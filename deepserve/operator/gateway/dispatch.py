"""Sending one request to a replica of a version (holding while there is none)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiohttp

from deepserve.operator.gateway.errors import Refused, not_found
from deepserve.operator.gateway.hold import Holder
from deepserve.operator.gateway.routing import ModelRoute, Router, VersionState

log = logging.getLogger(__name__)
T = TypeVar("T")


async def dispatch(
    router: Router,
    holder: Holder,
    route: ModelRoute,
    version: str,
    hashes: Sequence[int],
    started: float,
    send: Callable[[VersionState, str], Awaitable[T]],
) -> T:
    """``send(state, replica_url)`` to the best Ready replica, holding while there is none.

    A replica that refuses the connection (the request never reached it) is dropped and the
    request tried again or held. Raises :class:`Refused` (404 version gone, 503 hold full or
    timed out).
    """
    while True:
        state = router.state(route, version)
        if state is None:
            raise Refused(not_found(route.full_name), "model_not_found")
        url = router.pick(state, hashes)
        if url is None:
            await holder.wait((route.namespace, route.name, version), state, started)
            continue
        router.started(state, url, hashes)
        try:
            return await send(state, url)
        except aiohttp.ClientConnectorError as exc:  # never reached the pod: safe to re-hold
            log.warning("%s: replica %s refused (%s); trying again", route.full_name, url, exc)
            router.drop_upstream(state, url)
        finally:
            router.finished(state, url)
