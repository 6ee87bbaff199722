"""A small discrete-time simulation of one model under the autoscaler (tests and benchmarks).

Demand is offered concurrency (requests in flight) as a function of time. Replicas become
Ready ``cold_start_s`` after they are created (or never, for a pod stuck non-Ready); the
load the scaler observes is the demand, measured only while a Ready pod exists; while no
replica is Ready, requests wait in the activator (``held``). Everything runs on a
simulated clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from deepserve.operator.autoscaler.decision import (
    Observation,
    ScaleDecision,
    ScalerState,
    ScalingPolicy,
    decide,
)


@dataclass(frozen=True)
class Tick:
    """One row of a simulation trace."""

    t: float
    demand: float
    replicas: int
    ready: int
    decision: ScaleDecision


@dataclass
class SimulatedModel:
    """Replicas with a cold start, driven by :func:`decide` every ``tick_s``."""

    policy: ScalingPolicy
    cold_start_s: float = 10.0
    tick_s: float = 1.0
    noise: float = 0.0  # relative noise of each load sample (uniform +-noise)
    seed: int = 7
    never_ready: int = 0  # this many of the oldest pods never become Ready
    start_replicas: int = 0
    state: ScalerState = field(default_factory=ScalerState)
    pods: list[float] = field(default_factory=list)  # creation time of each replica
    trace: list[Tick] = field(default_factory=list)
    now: float = 0.0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.pods = [-1e9] * self.start_replicas
        self._stuck = set(range(self.never_ready))  # indexes (creation order) of stuck pods
        self._ids = list(range(self.start_replicas))
        self._next_id = self.start_replicas

    def _is_ready(self, i: int) -> bool:
        return self._ids[i] not in self._stuck and self.now - self.pods[i] >= self.cold_start_s

    def ready(self) -> int:
        """Replicas Ready now."""
        return sum(1 for i in range(len(self.pods)) if self._is_ready(i))

    def set_replicas(self, n: int) -> None:
        """Create or delete replicas; like a ReplicaSet, delete non-Ready then newest pods first."""
        while len(self.pods) < n:
            self.pods.append(self.now)
            self._ids.append(self._next_id)
            self._next_id += 1
        if len(self.pods) > n:
            order = sorted(range(len(self.pods)), key=lambda i: (self._is_ready(i), -self.pods[i]))
            drop = set(order[:len(self.pods) - n])
            self.pods = [t for i, t in enumerate(self.pods) if i not in drop]
            self._ids = [x for i, x in enumerate(self._ids) if i not in drop]

    def step(self, demand: float, external: int | None = None) -> Tick:
        """Advance one tick with ``demand`` in flight; ``external`` overrides the decision."""
        ready = self.ready()
        load = None
        if ready > 0:
            load = demand * (1.0 + self._rng.uniform(-self.noise, self.noise)) if demand else 0.0
        held = math.ceil(demand) if ready == 0 and demand > 0 else 0
        requests = demand * self.tick_s if ready > 0 else 0.0
        obs = Observation(self.now, len(self.pods), ready, load, requests, held)
        decision = decide(self.policy, self.state, obs)
        self.set_replicas(decision.replicas if external is None else external)
        row = Tick(self.now, demand, len(self.pods), ready, decision)
        self.trace.append(row)
        self.now += self.tick_s
        return row

    def run(self, demand: Callable[[float], float], seconds: float) -> list[Tick]:
        """Run ``seconds`` of simulated time; returns the new trace rows."""
        rows = []
        end = self.now + seconds
        while self.now < end - 1e-9:
            rows.append(self.step(demand(self.now)))
        return rows


def first_change(rows: list[Tick], since: float, above: int) -> float | None:
    """Seconds from ``since`` until the first decision above ``above`` replicas (None: never)."""
    for row in rows:
        if row.t >= since and row.decision.replicas > above:
            return row.t - since
    return None
