"""One model's autoscaler tick: observe -> decide (pure) -> write the scale subresource -> status.

The operator runs one :class:`ModelAutoscaler` per InferenceModel (a kopf daemon or timer,
kept in memo) and calls :meth:`ModelAutoscaler.tick` every ``tick_s`` (default 1 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.autoscaler import io
from deepserve.operator.autoscaler.capacity import check_capacity
from deepserve.operator.autoscaler.decision import Observation, ScaleDecision, ScalerState, decide
from deepserve.operator.autoscaler.ownership import DEEPSERVE, Ownership, detect_owner
from deepserve.operator.autoscaler.policy import policy_from_spec
from deepserve.operator.autoscaler.signals import model_load, requests_finished
from deepserve.operator.kube import Kube, KubeError

log = logging.getLogger(__name__)
STATUS_EVERY_S = 30.0


@dataclass(frozen=True)
class AutoscalerOptions:
    """Operator-wide autoscaler settings (flags of `deepserve operator run`)."""

    tick_s: float = 1.0
    manual_hold_s: float = 600.0
    allow_pool_move: bool = False
    hpa_every_s: float = 15.0
    policy_overrides: dict[str, float] = field(default_factory=dict)  # ScalingPolicy window fields
    activators: dict[str, str] = field(default_factory=dict)  # namespace -> activator /metrics URL


@dataclass(frozen=True)
class TickResult:
    """What one tick saw and did."""

    owner: Ownership
    decision: ScaleDecision | None
    current: int
    written: int | None
    status: dict[str, Any]


class ModelAutoscaler:
    """Autoscaler of one InferenceModel; not thread-safe (one daemon per model)."""

    def __init__(self, kube: Kube, namespace: str, name: str, options: AutoscalerOptions | None = None,
                 held: Callable[[str, str], int] | None = None, pools: Callable[[], list[Any]] | None = None,
                 sampler: io.MetricsSampler | None = None, clock: Callable[[], float] = time.monotonic,
                 ranked: Callable[[InferenceModelSpec, list[Any]], list[Any]] | None = None) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.options = options or AutoscalerOptions()
        self.state = ScalerState()
        self.sampler = sampler or io.MetricsSampler()
        self._held = held
        self._pools = pools
        self._ranked = ranked  # the planner's candidates for a spec on these pools, best first
        self._clock = clock
        self._hpas: tuple[float, list[dict[str, Any]]] = (-1e18, [])
        self._status: dict[str, Any] = {}
        self._status_at = -1e18
        self._tried: frozenset[str] = frozenset()  # pools the model was moved away from: never suggested again
        self._pool: str | None = None
        self._expected: int | None = None  # the count deepserve last wrote or accepted
        self._manual_since: datetime | None = None

    def _notice_edit(self, current: int, scale_to_zero: bool, wall: datetime) -> None:
        """Track changes of the count that deepserve did not write (kubectl scale, /scale).

        0 -> 1 with scale to zero enabled is the activator's ask, not an edit.
        """
        activation = scale_to_zero and self._expected == 0 and current == 1
        if self._expected is not None and current != self._expected and not activation:
            self._manual_since = wall
            log.info("%s/%s: replicas changed to %d outside deepserve; deferring", self.namespace,
                     self.name, current)
        self._expected = current

    def _hpa_list(self, now: float) -> list[dict[str, Any]]:
        if now - self._hpas[0] >= self.options.hpa_every_s:
            self._hpas = (now, io.list_hpas(self.kube, self.namespace))
        return self._hpas[1]

    def tick(self) -> TickResult | None:
        """One round; None when the model is gone or its spec is invalid (the controller reports that)."""
        now = self._clock()
        model = self.kube.get(io.API_VERSION, "InferenceModel", self.name, self.namespace)
        if model is None:
            return None
        try:
            spec = InferenceModelSpec.from_dict(model.get("spec") or {})
        except SpecError:
            return None
        placement = (model.get("status") or {}).get("placement") or {}
        if self._pool and placement.get("pool") and placement["pool"] != self._pool:
            self._tried |= {self._pool}
        self._pool = placement.get("pool") or self._pool
        policy = policy_from_spec(spec.scaling, spec.placement.concurrency, placement.get("decodeTokensPerSecond"),
                                  **self.options.policy_overrides)
        raw = (model.get("spec") or {}).get("scaling", {}).get("replicas")
        current = spec.scaling.desired() if raw is None else int(raw)
        wall = datetime.now(UTC)
        self._notice_edit(current, spec.scaling.scale_to_zero, wall)
        owner = detect_owner(model, self._hpa_list(now), wall, self.options.manual_hold_s, self._manual_since)
        pods = io.model_pods(self.kube, self.namespace, self.name)
        loads = self.sampler.sample(pods, now)
        ready = sum(1 for p in pods if p.ready)
        held = self._held(self.namespace, self.name) if self._held else 0
        obs = Observation(now, current, ready, model_load(loads, policy.metric) if ready else None,
                          requests_finished(loads), held)
        decision = decide(policy, self.state, obs)
        want, capacity_msg, move_to = decision.replicas, None, None
        if self._pools is not None and placement.get("pool"):
            pools = self._pools()
            offers = {p.name: p for p in pools}
            ranked = self._ranked(spec, pools) if self._ranked is not None and want > current else []
            verdict = check_capacity(want, current, sum(1 for p in pods if p.node),
                                     int(placement.get("gpusPerReplica", 1)), offers.get(placement["pool"]),
                                     ranked, offers, self.options.allow_pool_move, self._tried)
            want, capacity_msg, move_to = verdict.replicas, verdict.message, verdict.move_to
        written = None
        if owner.owner == DEEPSERVE and policy.enabled and want != current:
            try:
                io.write_scale(self.kube, self.namespace, self.name, want)
                written = self._expected = want
                log.info("%s/%s: %d -> %d replicas (%s: %s)", self.namespace, self.name, current, want,
                         decision.mode, decision.reason)
            except KubeError as e:
                log.warning("%s/%s: scale write failed: %s", self.namespace, self.name, e)
        status = self._scaling_status(owner, decision, want, policy.metric, policy.target, capacity_msg, move_to)
        self._write_status(status, now)
        return TickResult(owner, decision, current, written, status)

    def _scaling_status(self, owner: Ownership, d: ScaleDecision, want: int, metric: str, target: float,
                        capacity: str | None, move_to: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"owner": owner.owner, "ownerReason": owner.reason[:1000], "metric": metric,
                               "target": round(target, 3), "desiredReplicas": want, "mode": d.mode,
                               "reason": d.reason[:1000], "capacity": capacity, "suggestedPool": move_to}
        if d.stable_load is not None:
            out["stableLoad"] = round(d.stable_load, 2)
        if d.panic_load is not None:
            out["burstLoad"] = round(d.panic_load, 2)
        return out

    def _write_status(self, status: dict[str, Any], now: float) -> None:
        """Write when something but the load figures changed, or every 30 s."""
        def key(s: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in s.items() if k not in ("stableLoad", "burstLoad", "reason")}

        if key(status) == key(self._status) and now - self._status_at < STATUS_EVERY_S:
            return
        if self._status.get("lastScaleReplicas") != status["desiredReplicas"]:
            status["lastScaleTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            status["lastScaleReplicas"] = status["desiredReplicas"]
        else:
            status["lastScaleTime"] = self._status.get("lastScaleTime")
            status["lastScaleReplicas"] = self._status.get("lastScaleReplicas")
        try:
            io.patch_scaling_status(self.kube, self.namespace, self.name, status)
            self._status, self._status_at = status, now
        except KubeError as e:
            log.warning("%s/%s: status.scaling write failed: %s", self.namespace, self.name, e)
