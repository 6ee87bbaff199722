"""Where a request goes: a model's version (weights, stickiness, pin), then one of its replicas.

- Version: ``X-Deepserve-Version`` pins a version that exists (any weight, so a canary at 0
  can be tried); else ``X-Deepserve-Session`` is hashed onto the cumulative weights, so one
  session stays on one version while the weights stay; else a weighted random choice.
- Replica: among the version's Ready replicas, the highest score
  ``matched prefix blocks - load_penalty x (outstanding - least outstanding)
  - load_penalty x (queued at the pod + kv_weight x KV-cache use)``; ties go to the least
  outstanding, then at random. Outstanding counts requests this gateway has in flight to the
  replica; the pod's queue and KV-cache use (Gateway API Inference Extension gauges, see
  ``gateway.podload``) count when they were scraped recently, so other gateway replicas' load
  is seen too.

:class:`ModelRoute` is the immutable description (from discovery or configuration);
:class:`Router` holds the live state (outstanding counts, the prefix index, one
``asyncio.Event`` per version set while it has a Ready replica, for hold-and-wake).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from deepserve.operator.gateway.prefix import PrefixIndex

DEFAULT_VERSION = "default"
DEFAULT_LOAD_PENALTY = 8.0  # prefix blocks one extra request in flight is worth
DEFAULT_KV_WEIGHT = 2.0  # a full KV cache counts as this many requests queued


@dataclass(frozen=True)
class VersionTarget:
    """One version of a model: its traffic weight and Ready replica URLs (``http://ip:9000``).

    ``kserve_upstreams``, when given, holds each replica's KServe v2 base URL
    (``http://ip:8000``) in the same order as ``upstreams``.
    """

    name: str
    weight: int
    upstreams: tuple[str, ...] = ()
    kserve_upstreams: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRoute:
    """One servable model: ``namespace/name``, aliases, labels, and its versions' replicas.

    ``upstream`` alone is a one-version, one-replica model (``versions`` empty). A request
    for a version with no Ready replica is held until one is Ready (``gateway.hold``).
    """

    namespace: str
    name: str
    upstream: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    versions: tuple[VersionTarget, ...] = ()

    @property
    def full_name(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    def targets(self) -> tuple[VersionTarget, ...]:
        """The versions (one ``default`` version for a plain ``upstream``)."""
        if self.versions:
            return self.versions
        return (VersionTarget(DEFAULT_VERSION, 100, (self.upstream,) if self.upstream else ()),)


@dataclass
class VersionState:
    """Live state of one version: Ready replicas, requests in flight to each, readiness."""

    weight: int
    upstreams: list[str] = field(default_factory=list)
    outstanding: dict[str, int] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    kserve: dict[str, str] = field(default_factory=dict)  # replica URL -> its KServe v2 base URL

    def set_upstreams(self, upstreams: Sequence[str]) -> None:
        """Replace the Ready replicas, keeping counts of those that stay; wake waiters."""
        self.upstreams = list(upstreams)
        self.outstanding = {u: self.outstanding.get(u, 0) for u in self.upstreams}
        if self.upstreams:
            self.ready.set()
        else:
            self.ready.clear()


class Router:
    """Routes by model name or alias to a version and a replica."""

    def __init__(
        self,
        routes: Sequence[ModelRoute] = (),
        *,
        seed: int | None = None,
        prefix: PrefixIndex | None = None,
        load_penalty: float = DEFAULT_LOAD_PENALTY,
        kv_weight: float = DEFAULT_KV_WEIGHT,
    ) -> None:
        self._rng = random.Random(seed)
        self.prefix = prefix if prefix is not None else PrefixIndex()
        self.load_penalty = load_penalty
        self.kv_weight = kv_weight
        self.pod_load: dict[str, tuple[float, float]] = {}  # replica -> (queued, kv use 0..1), fresh
        self._by_name: dict[str, ModelRoute] = {}
        self._versions: dict[str, dict[str, VersionState]] = {}
        self.set_routes(routes)

    def set_routes(self, routes: Sequence[ModelRoute]) -> None:
        """Replace every route; versions that stay keep their counts and waiters."""
        by_name: dict[str, ModelRoute] = {}
        versions: dict[str, dict[str, VersionState]] = {}
        for route in routes:
            for key in (route.full_name, *route.aliases):
                by_name.setdefault(key, route)
            old = self._versions.get(route.full_name, {})
            states: dict[str, VersionState] = {}
            for target in route.targets():
                state = old.get(target.name) or VersionState(target.weight)
                state.weight = target.weight
                gone = set(state.upstreams) - set(target.upstreams)
                state.set_upstreams(target.upstreams)
                state.kserve = dict(zip(target.upstreams, target.kserve_upstreams, strict=False))
                for url in gone:
                    self.prefix.forget(url)
                states[target.name] = state
            versions[route.full_name] = states
        self._by_name, self._versions = by_name, versions

    def lookup(self, model: str) -> ModelRoute | None:
        """The route a model name or alias means, or None."""
        return self._by_name.get(model)

    def replicas(self) -> list[str]:
        """Every Ready replica URL of every route."""
        return sorted({u for states in self._versions.values() for st in states.values() for u in st.upstreams})

    def routes(self) -> list[ModelRoute]:
        """Every route once, sorted by full name."""
        seen = {r.full_name: r for r in self._by_name.values()}
        return [seen[k] for k in sorted(seen)]

    def state(self, route: ModelRoute, version: str) -> VersionState | None:
        """The live state of one version (None when the version went away)."""
        return self._versions.get(route.full_name, {}).get(version)

    def choose_version(
        self, route: ModelRoute, pinned: str | None = None, session: str | None = None
    ) -> str | None:
        """The pinned version if it exists (None if not), else sticky or weighted."""
        states = self._versions.get(route.full_name, {})
        if pinned:
            return pinned if pinned in states else None
        weighted = [(v, s.weight) for v, s in states.items() if s.weight > 0]
        total = sum(w for _, w in weighted)
        if not total:
            return next(iter(states), None)
        if session:
            digest = hashlib.blake2b(f"{route.full_name}\0{session}".encode(), digest_size=8)
            point = int.from_bytes(digest.digest(), "big") % total
        else:
            point = self._rng.randrange(total)
        for version, weight in weighted:
            if point < weight:
                return version
            point -= weight
        return weighted[-1][0]  # unreachable: point < total

    def pick(self, state: VersionState, hashes: Sequence[int]) -> str | None:
        """The replica to send a prompt with these block hashes to (None: none Ready)."""
        if not state.upstreams:
            return None
        loads = state.outstanding
        least = min(loads.get(u, 0) for u in state.upstreams)
        matched = self.prefix.matches(hashes, state.upstreams) if hashes else {}
        best: list[str] = []
        best_key: tuple[float, int] | None = None
        for url in state.upstreams:
            load = loads.get(url, 0)
            queued, kv = self.pod_load.get(url, (0.0, 0.0))
            pressure = load - least + queued + self.kv_weight * kv
            key = (matched.get(url, 0) - self.load_penalty * pressure, -load)
            if best_key is None or key > best_key:
                best, best_key = [url], key
            elif key == best_key:
                best.append(url)
        return best[0] if len(best) == 1 else self._rng.choice(best)

    def started(self, state: VersionState, url: str, hashes: Sequence[int]) -> None:
        """Count a request in flight to ``url`` and remember its prompt blocks there."""
        state.outstanding[url] = state.outstanding.get(url, 0) + 1
        if hashes:
            self.prefix.record(hashes, url)

    @staticmethod
    def finished(state: VersionState, url: str) -> None:
        """A request to ``url`` is done."""
        if state.outstanding.get(url, 0) > 0:
            state.outstanding[url] -= 1

    def drop_upstream(self, state: VersionState, url: str) -> None:
        """Take a replica out (it refused a connection); discovery adds it back when Ready."""
        if url in state.upstreams:
            state.set_upstreams([u for u in state.upstreams if u != url])
            self.prefix.forget(url)
