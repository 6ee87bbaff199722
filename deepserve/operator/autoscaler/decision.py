"""The scale decision: a pure function of a policy, the scaler's memory and one observation.

Modelled on Knative's KPA (https://knative.dev/docs/serving/autoscaling/kpa-specific/):

- two windows over the load samples: **stable** (default 60 s) and **panic/burst**
  (default 6 s). Normally the stable average decides. When the burst average needs
  ``panic_threshold`` x the Ready capacity, the scaler panics: it scales on the burst
  average at once and never scales down until the stable window has passed without
  a panic condition. A load step reaches the decision within a scrape or two.
- **stabilisation**: scale-down follows the highest recommendation of the last
  ``scale_down_delay_s`` (like the HPA's scale-down stabilisation window), a
  ``tolerance`` band ignores small deviations, and each step is rate-limited
  (``max_scale_up_rate`` x Ready replicas, at most a halving down).
- **scale to zero** only after ``idle_seconds`` without any request (finished, in
  flight, or held by the activator) and never because metrics are *missing*.
- **non-Ready pods** never count as capacity (load is measured on Ready pods only and
  the panic test divides by Ready replicas), and never block a decision: missing
  samples hold the current count, demand from the activator still scales up, and the
  idle timer runs on requests, not on pods.

All times are seconds on a caller-supplied monotonic clock, so tests run on simulated time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from deepserve.operator.autoscaler.signals import ADDITIVE, INFLIGHT, METRICS


class PolicyError(ValueError):
    """A scaling policy field is invalid; the message names the field."""


@dataclass(frozen=True)
class ScalingPolicy:
    """How one model scales. Validated on construction."""

    min_replicas: int
    max_replicas: int
    target: float  # load per Ready replica, in the metric's unit
    metric: str = INFLIGHT
    scale_to_zero: bool = False
    idle_seconds: float = 300.0
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    sustain_s: float = 3.0
    stuck_after_s: float = 120.0
    tolerance: float = 0.1
    scale_down_delay_s: float = 60.0
    max_scale_up_rate: float = 10.0
    max_scale_down_rate: float = 2.0

    def __post_init__(self) -> None:
        checks = [
            (self.min_replicas >= 0, "min_replicas", "must be >= 0"),
            (self.max_replicas >= self.min_replicas, "max_replicas", "must be >= min_replicas"),
            (self.target > 0, "target", "must be > 0"),
            (self.metric in METRICS, "metric", f"must be one of {', '.join(METRICS)}"),
            (not self.scale_to_zero or self.min_replicas == 0, "scale_to_zero", "requires min_replicas 0"),
            (self.idle_seconds > 0, "idle_seconds", "must be > 0"),
            (self.stuck_after_s > 0, "stuck_after_s", "must be > 0"),
            (0 < self.panic_window_s <= self.stable_window_s, "panic_window_s", "must be in (0, stable_window_s]"),
            (self.panic_threshold > 1, "panic_threshold", "must be > 1"),
            (0 < self.sustain_s <= self.panic_window_s, "sustain_s", "must be in (0, panic_window_s]"),
            (0 <= self.tolerance < 1, "tolerance", "must be in [0, 1)"),
            (self.scale_down_delay_s >= 0, "scale_down_delay_s", "must be >= 0"),
            (self.max_scale_up_rate > 1, "max_scale_up_rate", "must be > 1"),
            (self.max_scale_down_rate > 1, "max_scale_down_rate", "must be > 1"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise PolicyError(f"scaling policy {name} {message}")

    @property
    def enabled(self) -> bool:
        """Whether there is anything to decide (a range of replicas, or scale to zero)."""
        return self.max_replicas > self.min_replicas or self.scale_to_zero

    @property
    def floor(self) -> int:
        """Fewest replicas while the model is active (zero only through the idle path)."""
        return min(max(self.min_replicas, 1), self.max_replicas)


@dataclass(frozen=True)
class Observation:
    """What was seen at one tick."""

    now: float
    current: int  # replicas now in spec (the scale subresource)
    ready: int  # Ready pods
    load: float | None  # model load over Ready pods (signals.model_load); None = unknown
    requests: float = 0.0  # requests finished since the last tick
    held: int = 0  # requests held by the activator waiting for a replica


@dataclass
class ScalerState:
    """What the scaler remembers between ticks of one model (in the operator's memo)."""

    samples: deque[tuple[float, float]] = field(default_factory=deque)  # (t, load)
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)  # (t, desired)
    last_activity: float | None = None
    panic_until: float | None = None
    panic_peak: int = 0
    last_current: int | None = None
    starved_since: float | None = None  # demand waiting, replicas exist, none Ready


@dataclass(frozen=True)
class ScaleDecision:
    """The replica count to write and why."""

    replicas: int
    mode: str  # "stable" | "panic" | "idle" | "activate" | "hold" | "fixed"
    reason: str
    stable_load: float | None = None
    panic_load: float | None = None


def _average(samples: deque[tuple[float, float]], since: float) -> float | None:
    values = [v for t, v in samples if t > since]
    return sum(values) / len(values) if values else None


def _wanted(policy: ScalingPolicy, load: float, ready: int, current: int) -> int:
    """Replicas for ``load``, keeping ``current`` inside the tolerance band."""
    raw = load / policy.target if policy.metric in ADDITIVE else max(ready, 1) * load / policy.target
    if current > 0 and abs(raw / current - 1.0) <= policy.tolerance:
        return current
    return math.ceil(raw - 1e-9)


def _sustained_want(policy: ScalingPolicy, state: ScalerState, obs: Observation) -> int:
    """Replicas that every sample of the last ``sustain_s`` needs (0 with fewer than 2 samples).

    A load step is trusted for scale-up before the stable window catches up when *all*
    recent samples ask for more: one noisy sample cannot.
    """
    recent = [v for t, v in state.samples if t > obs.now - policy.sustain_s]
    if len(recent) < 2:
        return 0
    return _wanted(policy, min(recent), obs.ready, obs.current)


def _remember(state: ScalerState, policy: ScalingPolicy, obs: Observation) -> None:
    if obs.load is not None:
        state.samples.append((obs.now, obs.load))
    while state.samples and state.samples[0][0] <= obs.now - policy.stable_window_s:
        state.samples.popleft()
    active = obs.requests > 0 or obs.held > 0 or (obs.load or 0.0) > 1e-9
    woke = state.last_current == 0 and obs.current > 0  # scale-from-zero (activator or user)
    if active or woke or state.last_activity is None:
        state.last_activity = obs.now
    state.last_current = obs.current


def _limit(policy: ScalingPolicy, want: int, obs: Observation) -> int:
    up_limit = max(obs.current, math.ceil(max(obs.ready, 1) * policy.max_scale_up_rate))
    down_limit = math.floor(obs.current / policy.max_scale_down_rate)
    return max(min(want, up_limit), min(down_limit, obs.current))


def _activate(policy: ScalingPolicy, state: ScalerState, obs: Observation) -> ScaleDecision:
    """Demand is held and nothing is Ready: ask for replicas, and route around stuck ones."""
    want = max(obs.current, policy.floor, math.ceil(obs.held / policy.target) if policy.metric == INFLIGHT else 1)
    why = f"{obs.held} request(s) held by the activator and no Ready replica"
    if obs.current == 0 or state.starved_since is None:
        state.starved_since = obs.now
    elif obs.now - state.starved_since >= policy.stuck_after_s:
        # replicas that stay non-Ready must not wedge the model: add one, then wait again
        want = max(want, obs.current + 1)
        state.starved_since = obs.now
        why += f"; {obs.current} replica(s) not Ready for {policy.stuck_after_s:.0f}s, adding one"
    return ScaleDecision(min(want, policy.max_replicas), "activate", why)


def decide(policy: ScalingPolicy, state: ScalerState, obs: Observation) -> ScaleDecision:
    """The replica count for ``obs`` (updates ``state``)."""
    _remember(state, policy, obs)
    if not policy.enabled:
        return ScaleDecision(policy.max_replicas, "fixed", "minReplicas == maxReplicas: nothing to decide")
    idle_for = obs.now - (state.last_activity if state.last_activity is not None else obs.now)
    if policy.scale_to_zero and obs.held == 0 and idle_for >= policy.idle_seconds:
        state.recommendations.clear()
        state.panic_until = None
        return ScaleDecision(0, "idle", f"no requests for {idle_for:.0f}s (idleSeconds {policy.idle_seconds:.0f})")
    if obs.held > 0 and obs.ready == 0:
        return _activate(policy, state, obs)
    state.starved_since = None
    stable = _average(state.samples, obs.now - policy.stable_window_s)
    burst = _average(state.samples, obs.now - policy.panic_window_s)
    if stable is None or burst is None or (obs.load is None and obs.ready == 0):
        want = obs.current if obs.current == 0 and policy.scale_to_zero else max(obs.current, policy.floor)
        return ScaleDecision(min(want, policy.max_replicas), "hold",
                             "no load sample from a Ready pod yet: keeping the current count",
                             stable, burst)
    stable_want = _wanted(policy, stable, obs.ready, obs.current)
    burst_want = _wanted(policy, burst, obs.ready, obs.current)
    if burst_want >= policy.panic_threshold * max(obs.ready, 1) and burst_want > obs.current:
        if state.panic_until is None:
            state.panic_peak = obs.current
        state.panic_until = obs.now + policy.stable_window_s
    elif state.panic_until is not None and obs.now >= state.panic_until:
        state.panic_until = None
    if state.panic_until is not None:
        want = max(burst_want, obs.current, state.panic_peak)
        state.panic_peak = want
        mode = "panic"
        why = (f"burst {policy.panic_window_s:.0f}s load {burst:.2f} needs {burst_want} replicas "
               f"({obs.ready} Ready)")
    else:
        want, mode = stable_want, "stable"
        why = f"stable {policy.stable_window_s:.0f}s load {stable:.2f} / target {policy.target:g}"
        sustained = _sustained_want(policy, state, obs)
        if sustained > max(want, obs.current):
            want, mode = sustained, "burst"
            why = f"load above {obs.current} replicas' target for {policy.sustain_s:.0f}s: needs {sustained}"
    want = max(policy.floor, min(policy.max_replicas, want))
    state.recommendations.append((obs.now, want))
    while state.recommendations and state.recommendations[0][0] <= obs.now - policy.scale_down_delay_s:
        state.recommendations.popleft()
    if want < obs.current:
        held_back = max(r for _, r in state.recommendations)
        if held_back > want:
            why += f"; scale-down held at {min(held_back, obs.current)} for {policy.scale_down_delay_s:.0f}s"
        want = min(obs.current, held_back)
    limited = _limit(policy, want, obs)
    if limited != want:
        why += f"; step limited to {limited}"
    final = max(policy.floor, min(policy.max_replicas, limited))
    return ScaleDecision(final, mode, why, stable, burst)
