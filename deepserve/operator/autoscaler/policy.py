"""Build a :class:`ScalingPolicy` from an InferenceModel's ``spec.scaling`` view."""

from __future__ import annotations

from typing import Any

from deepserve.operator.autoscaler.decision import ScalingPolicy
from deepserve.operator.autoscaler.signals import INFLIGHT, QUEUE_TIME, TOKENS

#: Mean queue time per request a replica may build before another one is added (50 ms).
DEFAULT_QUEUE_TIME_US = 50_000.0
#: Share of the planner's decode estimate a replica is asked to sustain.
TOKENS_HEADROOM = 0.7


def default_target(metric: str, concurrency: int, decode_tokens_per_s: float | None) -> float:
    """The per-replica target when ``spec.scaling.target.value`` is unset.

    In-flight requests: the placement's ``concurrency`` (the batch the planner sized a
    replica for). Tokens/s: 70 % of the planner's decode estimate. Queue time: 50 ms.
    """
    if metric == INFLIGHT:
        return float(max(1, concurrency))
    if metric == TOKENS:
        return TOKENS_HEADROOM * decode_tokens_per_s if decode_tokens_per_s else 100.0
    if metric == QUEUE_TIME:
        return DEFAULT_QUEUE_TIME_US
    raise ValueError(f"unknown scaling metric {metric!r}")


def policy_from_spec(scaling: Any, concurrency: int = 8, decode_tokens_per_s: float | None = None,
                     **overrides: Any) -> ScalingPolicy:
    """A policy from ``views.Scaling`` (min/max, target, scale to zero) plus window overrides.

    ``overrides`` are ScalingPolicy fields the operator sets from its flags (windows,
    delays); raises PolicyError naming a bad field.
    """
    target = scaling.target_value or default_target(scaling.target_metric, concurrency, decode_tokens_per_s)
    return ScalingPolicy(min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas, target=float(target),
                         metric=scaling.target_metric, scale_to_zero=scaling.scale_to_zero,
                         idle_seconds=float(scaling.idle_seconds), **overrides)
