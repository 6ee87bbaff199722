"""The per-model tick with a fake API seam: writes /scale when it owns the count, defers otherwise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from deepserve.operator.autoscaler.io import MetricsSampler
from deepserve.operator.autoscaler.loop import AutoscalerOptions, ModelAutoscaler
from deepserve.operator.metering.scrape import MetricsSample, parse_metrics_text

pytestmark = pytest.mark.unit


class FakeKube:
    """Just the calls the autoscaler makes."""

    def __init__(self, model: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        self.model, self.pods = model, pods
        self.hpas: list[dict[str, Any]] = []
        self.scale_writes: list[tuple[int, str]] = []
        self.status: dict[str, Any] = {}

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.model

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.pods if kind == "Pod" else self.hpas

    def request(self, method: str, path: str, *, body: Any = None, query: Any = None, **_: Any) -> dict[str, Any]:
        assert method == "PUT" and path.endswith("/inferencemodels/chat/scale")
        self.scale_writes.append((body["spec"]["replicas"], dict(query)["fieldManager"]))
        self.model["spec"]["scaling"]["replicas"] = body["spec"]["replicas"]
        return body

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str | None,
                     status: dict[str, Any]) -> dict[str, Any]:
        self.status.update(status["scaling"])
        return status


def pod(i: int, ready: bool = True) -> dict[str, Any]:
    return {"metadata": {"uid": f"u{i}", "name": f"chat-main-{i}", "labels": {"deepserve.io/version": "main"}},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "podIP": f"10.0.0.{i}",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def metrics(duration_us: float) -> MetricsSample:
    return parse_metrics_text("# TYPE nv_inference_request_duration_us counter\n"
                              f'nv_inference_request_duration_us{{model="chat",version="1"}} {duration_us}\n'
                              "# TYPE nv_inference_request_success counter\n"
                              f'nv_inference_request_success{{model="chat",version="1"}} {duration_us / 1000}\n')


def setup(managed: list[dict[str, Any]] | None = None) -> tuple[FakeKube, ModelAutoscaler, list[float]]:
    model = {"metadata": {"name": "chat", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z",
                          "managedFields": managed or []},
             "spec": {"source": {"uri": "builtin://tiny-llama"}, "placement": {"concurrency": 4},
                      "scaling": {"minReplicas": 1, "maxReplicas": 10, "replicas": 1}}}
    kube = FakeKube(model, [pod(1)])
    clock = [0.0]
    counters = {"v": 0.0}

    def scrape(urls: list[str]) -> dict[str, MetricsSample]:
        counters["v"] += 20e6  # 20 s of request time per 1 s tick: 20 in flight
        return {u: metrics(counters["v"]) for u in urls}

    auto = ModelAutoscaler(kube, "ns", "chat", AutoscalerOptions(), sampler=MetricsSampler(scrape),  # type: ignore[arg-type]
                           clock=lambda: clock[0])
    return kube, auto, clock


def test_owner_writes_the_scale_subresource_and_status() -> None:
    kube, auto, clock = setup()
    for _ in range(5):
        auto.tick()
        clock[0] += 1
    assert kube.scale_writes and kube.scale_writes[0] == (5, "deepserve-autoscaler")
    assert kube.status["owner"] == "deepserve" and kube.status["desiredReplicas"] == 5
    assert kube.status["mode"] in ("panic", "burst")


def test_manual_edit_is_respected() -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube, auto, clock = setup([{"manager": "kubectl", "operation": "Update", "subresource": "scale", "time": now}])
    for _ in range(5):
        result = auto.tick()
        clock[0] += 1
    assert kube.scale_writes == []
    assert result is not None and result.decision is not None and result.decision.replicas == 5
    assert kube.status["owner"] == "external" and "manual edit by kubectl" in kube.status["ownerReason"]


def test_hpa_owns_it() -> None:
    kube, auto, clock = setup()
    kube.hpas = [{"metadata": {"name": "chat"}, "spec": {"scaleTargetRef": {"kind": "InferenceModel", "name": "chat"}}}]
    for _ in range(5):
        auto.tick()
        clock[0] += 1
    assert kube.scale_writes == [] and kube.status["owner"] == "external"


def test_non_ready_pod_is_not_scraped_and_nothing_happens_without_samples() -> None:
    kube, auto, clock = setup()
    kube.pods = [pod(1, ready=False)]
    for _ in range(5):
        result = auto.tick()
        clock[0] += 1
    assert kube.scale_writes == [] and result is not None and result.decision is not None
    assert result.decision.mode == "hold"


def test_scale_write_by_someone_else_is_noticed_without_managed_fields() -> None:
    kube, auto, clock = setup()
    auto.tick()
    clock[0] += 1
    kube.model["spec"]["scaling"]["replicas"] = 2  # `kubectl scale` through /scale leaves no managedFields
    for _ in range(5):
        result = auto.tick()
        clock[0] += 1
    assert kube.scale_writes == [] and result is not None
    assert kube.status["owner"] == "external" and "manual edit" in kube.status["ownerReason"]


def busy_scaler(kube: FakeKube, clock: list[float], pools: list[Any], allow_move: bool) -> ModelAutoscaler:
    """An autoscaler seeing 20 requests in flight, with the planner's ranking on ``pools``."""
    from deepserve.operator.controller.planning import ranked_candidates

    return ModelAutoscaler(kube, "ns", "chat", AutoscalerOptions(allow_pool_move=allow_move),  # type: ignore[arg-type]
                           sampler=MetricsSampler(lambda urls: {u: metrics(clock[0] * 20e6) for u in urls}),
                           clock=lambda: clock[0], pools=lambda: pools, ranked=ranked_candidates)


def test_a_full_pool_names_the_planners_next_pool_that_fits() -> None:
    from deepserve.operator.placement import PoolOffer

    pools = [PoolOffer("l4", "nvidia-l4", 1, 3, 0, 0.71, "USD", 3, {"pool": "l4"}, node_free_gpus=(0, 0, 0)),
             PoolOffer("h100", "nvidia-h100-sxm5-80gb", 8, 2, 16, 4.0, "USD", 2, {"pool": "h100"})]
    for allow, suggested in ((True, "h100"), (False, None)):
        kube, _, clock = setup()
        kube.model["status"] = {"placement": {"pool": "l4", "gpusPerReplica": 1}}
        auto = busy_scaler(kube, clock, pools, allow)
        for _ in range(5):
            auto.tick()
            clock[0] += 1
        assert kube.status["capacity"].startswith("NoCapacity: pool l4 has room for 1 replica"), kube.status
        assert kube.status["suggestedPool"] == suggested, kube.status
        assert kube.status["desiredReplicas"] == 1  # capped at what the pool holds, never a loop of writes


def test_a_pool_the_model_moved_away_from_is_never_suggested_again() -> None:
    from deepserve.operator.placement import PoolOffer

    l4_free = PoolOffer("l4", "nvidia-l4", 1, 12, 12, 0.71, "USD", 12, {"pool": "l4"}, node_free_gpus=(1,) * 12)
    h100_full = PoolOffer("h100", "nvidia-h100-sxm5-80gb", 8, 1, 0, 4.0, "USD", 1, {"pool": "h100"},
                          node_free_gpus=(0,))
    kube, _, clock = setup()
    kube.model["status"] = {"placement": {"pool": "l4", "gpusPerReplica": 1}}
    pools = [l4_free, h100_full]
    auto = busy_scaler(kube, clock, pools, True)
    auto.tick()
    kube.model["status"]["placement"]["pool"] = "h100"  # the operator moved it (l4 was full then)
    for _ in range(5):
        clock[0] += 1
        auto.tick()
    assert kube.status["capacity"].startswith("NoCapacity: pool h100"), kube.status
    assert kube.status["desiredReplicas"] == 1, kube.status
    assert kube.status["suggestedPool"] is None and "no alternative pool fits" in kube.status["capacity"]
