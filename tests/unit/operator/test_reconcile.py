"""One idempotent reconcile: converge, write nothing when nothing changed, undo hand edits."""

from __future__ import annotations

from typing import Any

import pytest
from fake_api import FakeApi
from model_cases import make_model

from deepserve.operator.builders import Settings
from deepserve.operator.controller.reconcile import (
    AppliedCache,
    Observed,
    merge_patch,
    reconcile,
    split_replicas,
)
from deepserve.operator.placement import PoolOffer

pytestmark = pytest.mark.unit
NOW = "2026-11-29T00:00:00Z"
POOLS = [
    PoolOffer("l4", "nvidia-l4", 1, 3, 3, 0.7, "USD", 3, {"cloud.google.com/gke-nodepool": "l4"}),
    PoolOffer("h100-sxm", "nvidia-h100-sxm5-80gb", 8, 2, 16, 4.0, "USD", 2, {"karpenter.sh/nodepool": "h100-sxm"}),
]


def model_obj(b: Any, generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = b.obj()
    obj["metadata"].update(uid="model-uid", generation=generation)
    obj["status"] = status or {}
    return obj


def run(api: FakeApi, model: dict[str, Any], applied: AppliedCache, *, ready: bool = False,
        last: dict[str, Any] | None = None, pools: list[Any] = POOLS, clock: float = 0.0,
        observed: Any = None):
    seen = observed or api.observed(model, pools, ready)
    return reconcile(seen, api, Settings(), applied, NOW, last, clock=clock)


def test_first_reconcile_creates_children_and_writes_status_once() -> None:
    api, applied = FakeApi(), {}
    model = model_obj(make_model("llama"))
    result, status = run(api, model, applied)
    assert sorted(result.applied) == ["ConfigMap/llama-main-repo", "Deployment/llama-main",
                                      "PodDisruptionBudget/llama-main", "Service/llama", "Service/llama-main"]
    assert result.status_written and len(api.status_patches) == 1
    assert status["placement"]["pool"] == "l4" and status["observedGeneration"] == 1
    assert ("Normal", "Placed") in [(t, r) for t, r, _ in result.events]


def test_nothing_changed_writes_nothing() -> None:
    api, applied = FakeApi(), {}
    model = model_obj(make_model("llama"))
    _, status = run(api, model, applied)
    writes = api.writes
    result, again = run(api, model, applied, last=status)
    assert (result.applied, result.status_written, api.writes) == ([], False, writes)
    assert again == status


def test_ready_deployments_make_the_model_ready() -> None:
    api, applied = FakeApi(), {}
    model = model_obj(make_model("llama").replicas(2, max_=4))
    _, status = run(api, model, applied)
    _, status = run(api, model, applied, ready=True, last=status)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert status["readyReplicas"] == 2 and status["versions"][0]["state"] == "Ready"


def test_hand_edit_and_delete_are_reverted() -> None:
    api, applied = FakeApi(), {}
    model = model_obj(make_model("llama"))
    _, status = run(api, model, applied)
    api.hand_edit("Deployment", "llama-main", ["spec", "replicas"], 7)
    del api.objects[("Service", "llama")]
    result, _ = run(api, model, applied, last=status, clock=60.0)
    assert sorted(result.applied) == ["Deployment/llama-main", "Service/llama"]
    assert api.objects[("Deployment", "llama-main")]["spec"]["replicas"] == 1
    assert [r for _, r, _ in result.events].count("DriftCorrected") == 2


def test_writes_not_yet_in_the_watch_cache_are_not_repeated() -> None:
    api, applied = FakeApi(), {}
    model = model_obj(make_model("llama"))
    _, status = run(api, model, applied, observed=Observed(model=model, pools=POOLS))
    writes = api.writes
    lagging = Observed(model=model, pools=POOLS)  # the index has seen none of the children yet
    result, _ = run(api, model, applied, last=status, observed=lagging, clock=1.0)
    assert result.applied == [] and api.writes == writes


def test_spec_change_rolls_and_keeps_the_pool_and_prunes_removed_versions() -> None:
    api, applied = FakeApi(), {}
    b = make_model("llama").versions(("a", 50), ("b", 50))
    _, status = run(api, model_obj(b), applied)
    before = api.objects[("Deployment", "llama-a")]["metadata"]["generation"]
    b2 = make_model("llama").engine(maxNewTokens=64).versions(("a", 100))
    result, status2 = run(api, model_obj(b2, generation=2), applied, last=status)
    assert api.objects[("Deployment", "llama-a")]["metadata"]["generation"] == before + 1
    assert ("Deployment", "llama-b") not in api.objects and "Deployment/llama-b" in result.deleted
    assert status2["placement"]["pool"] == status["placement"]["pool"]


def test_scaling_keeps_the_placement_without_replanning() -> None:
    api, applied = FakeApi(), {}
    _, status = run(api, model_obj(make_model("llama")), applied)
    pools = [POOLS[1]]  # l4 vanished from the offer list: now it must move
    _, moved = run(api, model_obj(make_model("llama").replicas(2), generation=2), applied, last=status,
                   pools=pools)
    assert moved["placement"]["pool"] == "h100-sxm"
    _, kept = run(api, model_obj(make_model("llama").replicas(3), generation=3), applied, last=moved, pools=POOLS)
    assert kept["placement"]["pool"] == "h100-sxm"  # cheaper pool is back, but scaling alone never moves


def test_the_autoscalers_suggested_pool_is_taken_only_when_moving_is_allowed() -> None:
    for allowed in (False, True):
        api, applied = FakeApi(), {}
        model = model_obj(make_model("llama"))
        _, status = run(api, model, applied)
        assert status["placement"]["pool"] == "l4"
        # the autoscaler found l4 full and h100-sxm fitting (its status.scaling, in the watched body)
        full = dict(status, scaling={"suggestedPool": "h100-sxm", "capacity": "NoCapacity: pool l4 ..."})
        seen = api.observed(model_obj(make_model("llama"), status=full), POOLS)
        result, after = reconcile(seen, api, Settings(allow_pool_move=allowed), applied, NOW, status)
        dep = api.objects[("Deployment", "llama-main")]
        if not allowed:
            assert after["placement"]["pool"] == "l4" and not result.applied
            continue
        assert after["placement"]["pool"] == "h100-sxm" and "Moved from pool l4" in after["placement"]["reason"]
        assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"karpenter.sh/nodepool": "h100-sxm"}
        assert ("Normal", "Placed") in [(t, r) for t, r, _ in result.events] and result.placed == ("h100-sxm", 1)
        # once moved, the same suggestion is no move at all
        again = api.observed(model_obj(make_model("llama"), status=dict(after, scaling=full["scaling"])), POOLS)
        result, kept = reconcile(again, api, Settings(allow_pool_move=True), applied, NOW, after)
        assert kept["placement"]["pool"] == "h100-sxm" and not result.applied


def test_no_pool_fits_is_a_condition_not_a_crash() -> None:
    api, applied = FakeApi(), {}
    b = make_model("big").source("hf://org/huge").set("source.shape", {
        "totalParams": 900_000_000_000, "layers": 120, "hiddenSize": 16384, "heads": 128, "vocabSize": 128000})
    b.set("resources.maxTensorParallel", 1)
    result, status = run(api, model_obj(b), applied)
    assert api.objects == {} and result.applied == []
    scheduled = next(c for c in status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["status"] == "False" and scheduled["message"]
    assert any(t == "Warning" for t, _, _ in result.events)


def test_unknown_shape_for_remote_source_is_reported() -> None:
    api, applied = FakeApi(), {}
    _, status = run(api, model_obj(make_model("x").source("hf://org/model")), applied)
    scheduled = next(c for c in status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "UnknownModelShape" and "spec.source.shape" in scheduled["message"]


def test_invalid_spec_creates_nothing_and_says_why() -> None:
    api, applied = FakeApi(), {}
    model = model_obj(make_model("x").engine(maxBatchSize=0))
    _, status = run(api, model, applied)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.engine.maxBatchSize" in degraded["message"]
    assert api.objects == {}


@pytest.mark.parametrize(("total", "weights", "want"), [
    (0, {"a": 90, "b": 10}, {"a": 0, "b": 0}),
    (4, {"a": 90, "b": 10}, {"a": 4, "b": 1}),
    (10, {"a": 50, "b": 50}, {"a": 5, "b": 5}),
    (3, {"a": 100, "b": 0}, {"a": 3, "b": 1}),
])
def test_split_replicas(total: int, weights: dict[str, int], want: dict[str, int]) -> None:
    assert split_replicas(total, weights) == want


def test_merge_patch_removes_stale_keys() -> None:
    assert merge_patch({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": 1}}) == {"a": None, "b": {"d": None}}
    assert merge_patch({"a": [1]}, {"a": [1]}) == {}


def test_a_refused_write_is_reported_in_status_and_raised() -> None:
    class Refusing(FakeApi):
        def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
            if obj["kind"] == "Service":
                raise RuntimeError("failed to allocate a serviceIP: range is full")
            return super().apply(obj)

    api = Refusing()
    result, _ = run(api, model_obj(make_model("llama")), {})
    assert isinstance(result.failure, RuntimeError)
    degraded = next(c for c in api.status_patches[-1]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ApplyFailed" and "range is full" in degraded["message"]


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_unknown_pool_name_is_named_in_scheduled_false_and_an_event() -> None:
    api, applied = FakeApi(), {}
    model = model_obj(make_model("typo").set("placement.allowedPools", ["l4x"]))
    result, status = run(api, model, applied)
    scheduled = _condition(status, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "UnknownPool")
    assert "spec.placement.allowedPools" in scheduled["message"] and "l4x" in scheduled["message"]
    assert "h100-sxm, l4" in scheduled["message"]  # the pools that do exist
    assert ("Warning", "UnknownPool") in [(t, r) for t, r, _ in result.events]
    assert result.applied == []


def test_an_unknown_name_next_to_a_known_pool_is_noted_and_the_known_one_used() -> None:
    api, applied = FakeApi(), {}
    model = model_obj(make_model("mixed").set("placement.allowedPools", ["gone", "l4"]))
    _, status = run(api, model, applied)
    scheduled = _condition(status, "Scheduled")
    assert scheduled["status"] == "True" and status["placement"]["pool"] == "l4"
    assert "no pool named gone exists" in scheduled["message"]


def test_a_refused_child_is_reported_once_and_returned_as_child_rejected() -> None:
    from deepserve.operator.controller.reconcile import ChildRejected
    from deepserve.operator.kube import KubeError

    api, applied = FakeApi(), {}
    api.refuse["Deployment"] = KubeError(422, "Invalid", 'Deployment.apps "r-main" is invalid: spec.x: Invalid')
    model = model_obj(make_model("r"))
    result, status = run(api, model, applied)
    assert isinstance(result.failure, ChildRejected)
    assert (result.failure.kind, result.failure.name, result.failure.status) == ("Deployment", "r-main", 422)
    warnings = [(r, m) for t, r, m in result.events if t == "Warning"]
    assert len(warnings) == 1 and warnings[0][0] == "ChildRejected" and "spec.x: Invalid" in warnings[0][1]
    degraded = _condition(status, "Degraded")
    assert degraded["reason"] == "ChildRejected" and "Deployment r-main" in degraded["message"]
    assert "spec.x: Invalid" in degraded["message"]
    assert _condition(status, "Progressing")["reason"] == "ChildRejected"
    # the next attempt is refused again: no new status write, no second Event
    result, _ = run(api, model, applied, last=status)
    assert isinstance(result.failure, ChildRejected) and result.events == []
    assert len(api.status_patches) == 1


def test_a_transient_write_error_is_not_a_refusal() -> None:
    from deepserve.operator.kube import KubeError

    api, applied = FakeApi(), {}
    api.refuse["Deployment"] = KubeError(503, "ServiceUnavailable", "etcd leader changed")
    result, _ = run(api, model_obj(make_model("t")), applied)
    assert isinstance(result.failure, KubeError)
    assert _condition(api.status_patches[-1], "Degraded")["reason"] == "ApplyFailed"


def test_a_422_from_an_unreachable_etcd_is_retried_as_transient_not_a_rejected_child() -> None:
    from deepserve.operator.kube import KubeError

    # what kube-apiserver answered while etcd restarted (the ClusterIP allocator could not reach it)
    api, applied = FakeApi(), {}
    api.refuse["Service"] = KubeError(422, "Invalid", 'Service "u-main" is invalid: spec.clusterIPs: Invalid '
                                      'value: [""]: failed to allocate IP: rpc error: code = Unavailable desc = '
                                      "error reading from server: connection reset by peer")
    result, _ = run(api, model_obj(make_model("u")), applied)
    assert isinstance(result.failure, KubeError) and result.failure.status == 503
    assert "ChildRejected" not in [r for t, r, _ in result.events]  # not reported as a refusal of the spec
    assert _condition(api.status_patches[-1], "Degraded")["reason"] == "ApplyFailed"


def test_degraded_pods_post_one_warning_event_per_reason() -> None:
    from deepserve.operator.controller.observed import PodState

    api, applied = FakeApi(), {}
    model = model_obj(make_model("crash"))
    _, status = run(api, model, applied)
    pod = PodState("crash-main-x", "main", "Running", "n1", False, None, "CrashLoopBackOff",
                   "container triton, restarted 3 times", 3)
    seen = api.observed(model, POOLS)
    seen.pods = (pod,)
    result, status = run(api, model, applied, last=status, observed=seen)
    assert [(t, r) for t, r, _ in result.events] == [("Warning", "CrashLoopBackOff")]
    assert "restarted 3 times" in result.events[0][2]
    seen.pods = (PodState("crash-main-x", "main", "Running", "n1", False, None, "CrashLoopBackOff",
                          "container triton, restarted 4 times", 4),)
    result, _ = run(api, model, applied, last=status, observed=seen)
    assert result.events == []  # same reason, one more restart: status updated, no new Event
