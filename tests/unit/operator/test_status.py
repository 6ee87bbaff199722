"""Status is one pure function of what was observed."""

from __future__ import annotations

from typing import Any

import pytest

from deepserve.operator.builders import ChosenPlacement
from deepserve.operator.controller.observed import DeploymentState, PodState, pod_state
from deepserve.operator.controller.planning import PlanOutcome
from deepserve.operator.controller.status import StatusInputs, compute_status

pytestmark = pytest.mark.unit
PLAN = PlanOutcome(ChosenPlacement("l4", "nvidia-l4", 1, 1, "bf16", {}), "cheapest", {"currency": "USD"})


def dep(ready: int, replicas: int = 1, updated: int | None = None, exceeded: bool = False) -> DeploymentState:
    return DeploymentState("main", 2, 2, replicas, ready, replicas if updated is None else updated, ready,
                           exceeded, "timed out" if exceeded else "")


def status(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(name="m", namespace="ns", generation=2, now="T1", plan=PLAN,
                                weights={"main": 100}, desired={"main": 1}, total_desired=1)
    base.update(kw)
    return compute_status(StatusInputs(**base))


def cond(st: dict[str, Any], kind: str) -> tuple[str, str]:
    c = next(c for c in st["conditions"] if c["type"] == kind)
    return c["status"], c["reason"]


def test_ready_when_every_weighted_version_has_its_replicas() -> None:
    st = status(deployments={"main": dep(1)})
    assert cond(st, "Ready") == ("True", "Serving")
    assert cond(st, "Progressing") == ("False", "RolloutComplete")
    assert cond(st, "Degraded") == ("False", "AsExpected")
    assert st["endpoint"] == "http://m.ns.svc.cluster.local:8000"
    assert st["selector"] == "deepserve.io/model=m" and st["observedGeneration"] == 2


def test_rollout_in_progress_keeps_serving() -> None:
    st = status(deployments={"main": dep(1, updated=0)})
    assert cond(st, "Ready")[0] == "True" and cond(st, "Progressing") == ("True", "RollingOut")


def test_unschedulable_pod_is_reported_with_the_scheduler_message() -> None:
    pod = pod_state({"metadata": {"name": "m-main-x", "labels": {"deepserve.io/version": "main"}},
                     "status": {"phase": "Pending", "conditions": [{
                         "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                         "message": "0/9 nodes are available: 9 Insufficient nvidia.com/gpu."}]}})
    st = status(deployments={"main": dep(0)}, pods=(pod,))
    assert cond(st, "Scheduled") == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in next(c["message"] for c in st["conditions"] if c["type"] == "Scheduled")
    assert cond(st, "Ready")[0] == "False" and cond(st, "Degraded")[0] == "True"


def test_crash_loop_and_deadline_are_degraded() -> None:
    pod = PodState("m-main-x", "main", "Running", "node-1", False, None, "CrashLoopBackOff")
    st = status(deployments={"main": dep(0, exceeded=True)}, pods=(pod,))
    assert cond(st, "Degraded") == ("True", "CrashLoopBackOff")
    assert st["versions"][0]["state"] == "Failed"
    st = status(deployments={"main": dep(0, exceeded=True)})
    assert cond(st, "Degraded") == ("True", "ProgressDeadlineExceeded")


UNKNOWN_BUILTIN = "model source 'builtin://tiny-x': unknown built-in model; known: tiny-llama"


def crashing_pod(**container: Any) -> dict[str, Any]:
    cs = {"name": "triton", "ready": False, "restartCount": 5,
          "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s restarting failed"}},
          "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": UNKNOWN_BUILTIN}}}
    cs.update(container)
    return {"metadata": {"name": "m-main-x", "labels": {"deepserve.io/version": "main"}},
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                       "containerStatuses": [cs]}}


def test_crash_looping_pod_is_degraded_and_not_ready_with_the_kubelets_reason_and_message() -> None:
    st = status(deployments={"main": dep(0)}, pods=(pod_state(crashing_pod()),))
    assert cond(st, "Degraded") == ("True", "CrashLoopBackOff")
    assert cond(st, "Ready") == ("False", "CrashLoopBackOff")
    message = next(c["message"] for c in st["conditions"] if c["type"] == "Degraded")
    assert "m-main-x" in message and "restarted 5 times" in message and "exit Error (code 1)" in message
    assert UNKNOWN_BUILTIN in message  # the engine's own words, so the user knows what to fix


def test_a_pod_that_stopped_being_ready_counts_before_the_deployment_notices() -> None:
    st = status(deployments={"main": dep(1)}, pods=(pod_state(crashing_pod()),))  # Deployment still says 1
    assert cond(st, "Ready") == ("False", "CrashLoopBackOff") and st["readyReplicas"] == 0


def test_pod_between_two_crashes_is_still_failing() -> None:
    """Running again after a non-zero exit, not ready yet: the kubelet shows no waiting reason."""
    pod = pod_state(crashing_pod(state={"running": {"startedAt": "T"}},
                                 lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))
    assert (pod.waiting_reason, pod.restarts) == ("OOMKilled", 5)
    st = status(deployments={"main": dep(0)}, pods=(pod,))
    assert cond(st, "Degraded") == ("True", "OOMKilled")


def test_recovered_and_healthy_pods_are_not_failures() -> None:
    healthy = crashing_pod(ready=True, state={"running": {"startedAt": "T"}})
    assert pod_state(healthy).waiting_reason is None  # restarted once, ready now
    fresh = crashing_pod(restartCount=0, state={"waiting": {"reason": "ContainerCreating"}}, lastState={})
    assert pod_state(fresh).waiting_reason is None


@pytest.mark.parametrize(("statuses", "reason"), [
    ({"initContainerStatuses": [{"name": "fetch", "restartCount": 2, "state": {"waiting": {
        "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 2, "message": "403 from S3"}}}]},
     "InitCrashLoopBackOff"),
    ({"containerStatuses": [{"name": "triton", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                      "message": "not found"}}}]},
     "ImagePullBackOff"),
    ({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}, "Evicted"),
])
def test_init_image_pull_and_eviction_failures_are_named(statuses: dict[str, Any], reason: str) -> None:
    body = {"metadata": {"name": "m-main-x", "labels": {"deepserve.io/version": "main"}},
            "status": {"phase": "Pending", **statuses}}
    st = status(deployments={"main": dep(0)}, pods=(pod_state(body),))
    assert cond(st, "Degraded") == ("True", reason)


def test_refused_child_is_degraded_not_progressing_and_not_ready() -> None:
    st = status(child_rejected="Deployment m-main: spec.template.spec.tolerations[0].key: Invalid value")
    assert cond(st, "Degraded") == ("True", "ChildRejected")
    assert cond(st, "Progressing") == ("False", "ChildRejected")
    assert cond(st, "Ready") == ("False", "ChildRejected")
    assert "Deployment m-main" in next(c["message"] for c in st["conditions"] if c["type"] == "Degraded")


def test_scaled_to_zero_is_ready() -> None:
    st = status(desired={"main": 0}, total_desired=0, deployments={"main": dep(0, replicas=0)})
    assert cond(st, "Ready") == ("True", "ScaledToZero") and st["versions"][0]["state"] == "ScaledToZero"


def test_transition_time_kept_until_status_flips() -> None:
    first = status(deployments={"main": dep(0)})
    same = status(deployments={"main": dep(0)}, now="T2", previous=first)
    assert same == first
    flipped = status(deployments={"main": dep(1)}, now="T3", previous=first)
    ready = next(c for c in flipped["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "T3"


def test_no_placement_names_the_reason() -> None:
    plan = PlanOutcome(None, "NoPoolFits: needs 150 GiB, largest pool offers 8x80 GiB but TP is limited to 4")
    st = status(plan=plan)
    assert cond(st, "Scheduled") == ("False", "NoPoolFits")
    assert st["placement"]["reason"].startswith("NoPoolFits")


def test_autoscaler_status_is_carried_so_the_merge_patch_keeps_it() -> None:
    from deepserve.operator.controller.reconcile import merge_patch

    first = status(deployments={"main": dep(1)})
    assert "scaling" not in first
    scaling = {"owner": "deepserve", "desiredReplicas": 1, "mode": "stable"}
    observed = {**first, "scaling": scaling}  # the autoscaler patched status.scaling meanwhile
    again = status(deployments={"main": dep(1)}, now="T2", previous=observed)
    assert again["scaling"] == scaling
    assert merge_patch(observed, again) == {}  # the reconcile's write nulls nothing
