"""Where a request goes: the weighted version split and the Ready upstreams of each version.

:class:`Routes` is the activator's view of the world, updated by a discovery loop (or by
tests) and read by the proxy. Waiting for a version to get a Ready upstream is an
``asyncio.Event`` per version, so held requests wake up the moment one appears.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class TrafficSplit:
    """Weighted choice of a version per request; deterministic for a given ``seed``."""

    def __init__(self, weights: Mapping[str, int], seed: int | None = None) -> None:
        self.weights = {v: int(w) for v, w in weights.items() if w > 0}
        self._rng = random.Random(seed)
        self._names = list(self.weights)
        self._cum: list[int] = []
        total = 0
        for name in self._names:
            total += self.weights[name]
            self._cum.append(total)
        self.total = total

    def choose(self) -> str | None:
        """A version name with probability weight / total; None when no weight is set."""
        if not self.total:
            return None
        x = self._rng.randrange(self.total)
        for name, upper in zip(self._names, self._cum, strict=True):
            if x < upper:
                return name
        return self._names[-1]  # unreachable: x < total


@dataclass
class VersionRoute:
    """One version: its weight and Ready upstream base URLs (``http://10.0.0.5:8000``)."""

    weight: int
    upstreams: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: dict[str, int] = field(default_factory=dict)


class Routes:
    """Models -> versions -> upstreams, with a traffic split per model.

    Must be used from the activator's event loop (``loop.call_soon_threadsafe`` from a
    discovery thread).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._models: dict[str, dict[str, VersionRoute]] = {}
        self._splits: dict[str, TrafficSplit] = {}

    def models(self) -> list[str]:
        """Known model names."""
        return sorted(self._models)

    def set_model(self, model: str, weights: Mapping[str, int]) -> None:
        """Declare a model's versions and weights (keeps upstreams of versions that stay)."""
        old = self._models.get(model, {})
        new = {v: old.get(v) or VersionRoute(w) for v, w in weights.items()}
        for v, w in weights.items():
            new[v].weight = w
        self._models[model] = new
        if model not in self._splits or self._splits[model].weights != {v: w for v, w in weights.items() if w > 0}:
            self._splits[model] = TrafficSplit(weights, self._seed)

    def remove_model(self, model: str) -> None:
        """Forget a model."""
        self._models.pop(model, None)
        self._splits.pop(model, None)

    def set_upstreams(self, model: str, version: str, upstreams: Sequence[str]) -> None:
        """Replace the Ready upstreams of a version and wake requests waiting for one."""
        route = self._models[model][version]
        route.upstreams = list(upstreams)
        route.inflight = {u: route.inflight.get(u, 0) for u in route.upstreams}
        if route.upstreams:
            route.ready.set()
        else:
            route.ready.clear()

    def drop_upstream(self, model: str, version: str, upstream: str) -> None:
        """Take one upstream out (it refused a connection); discovery adds it back if it is Ready."""
        route = self.route(model, version)
        if route is not None and upstream in route.upstreams:
            self.set_upstreams(model, version, [u for u in route.upstreams if u != upstream])

    def route(self, model: str, version: str) -> VersionRoute | None:
        """The route of one version, or None."""
        return self._models.get(model, {}).get(version)

    def versions(self, model: str) -> dict[str, VersionRoute]:
        """Versions of a model (empty when unknown)."""
        return dict(self._models.get(model, {}))

    def choose_version(self, model: str, pinned: str | None = None) -> str | None:
        """The pinned version if it exists, else a weighted choice; None for an unknown model."""
        versions = self._models.get(model)
        if not versions:
            return None
        if pinned:
            return pinned if pinned in versions else None
        chosen = self._splits[model].choose()
        return chosen if chosen is not None else next(iter(versions))

    @staticmethod
    def pick_upstream(route: VersionRoute) -> str | None:
        """The Ready upstream with the fewest requests in flight through this activator."""
        if not route.upstreams:
            return None
        return min(route.upstreams, key=lambda u: route.inflight.get(u, 0))
