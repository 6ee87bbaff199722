"""Serverless scaling of InferenceModels: pure decisions plus one small I/O layer.

Pure (no I/O, simulated clocks welcome)::

    from deepserve.operator.autoscaler import (
        ScalingPolicy, ScalerState, Observation, decide, pod_load, model_load,
        detect_owner, check_capacity, policy_from_spec)

    policy = policy_from_spec(spec.scaling, default_target=spec.placement.concurrency)
    state = ScalerState()                       # one per model, kept in the operator's memo
    d = decide(policy, state, Observation(now, current, ready, load, requests, held))
    d.replicas, d.mode, d.reason

I/O (:mod:`deepserve.operator.autoscaler.io`): sample Ready pods' Triton metrics and
write the replica count through the InferenceModel's scale subresource.
"""

from deepserve.operator.autoscaler.capacity import CapacityVerdict, check_capacity, replica_room
from deepserve.operator.autoscaler.decision import (
    Observation,
    PolicyError,
    ScaleDecision,
    ScalerState,
    ScalingPolicy,
    decide,
)
from deepserve.operator.autoscaler.ownership import DEEPSERVE, EXTERNAL, Ownership, detect_owner
from deepserve.operator.autoscaler.policy import policy_from_spec
from deepserve.operator.autoscaler.signals import METRICS, PodLoad, model_load, pod_load

__all__ = [
    "DEEPSERVE", "EXTERNAL", "METRICS", "CapacityVerdict", "Observation", "Ownership", "PodLoad", "PolicyError",
    "ScaleDecision", "ScalerState", "ScalingPolicy", "check_capacity", "decide", "detect_owner", "model_load",
    "pod_load", "policy_from_spec", "replica_room",
]
