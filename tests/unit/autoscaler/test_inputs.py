"""Load signals from Triton metrics, ownership of the replica count, pool capacity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.autoscaler import (
    DEEPSERVE,
    EXTERNAL,
    check_capacity,
    detect_owner,
    model_load,
    pod_load,
    policy_from_spec,
)
from deepserve.operator.metering.scrape import parse_metrics_text

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def triton(success: int, duration_us: int, queue_us: int = 0, pending: int = 0, tokens: int = 0) -> str:
    lab = '{model="m",version="1"}'
    return "\n".join([
        "# TYPE nv_inference_request_success counter", f"nv_inference_request_success{lab} {success}",
        "# TYPE nv_inference_request_failure counter", f"nv_inference_request_failure{lab} 0",
        "# TYPE nv_inference_request_duration_us counter", f"nv_inference_request_duration_us{lab} {duration_us}",
        "# TYPE nv_inference_queue_duration_us counter", f"nv_inference_queue_duration_us{lab} {queue_us}",
        "# TYPE nv_inference_pending_request_count gauge", f"nv_inference_pending_request_count{lab} {pending}",
        "# TYPE deepserve_generated_tokens counter", f"deepserve_generated_tokens{lab} {tokens}",
        "# TYPE nv_gpu_utilization gauge", 'nv_gpu_utilization{gpu_uuid="x"} 0.5', "",
    ])


def test_inflight_by_littles_law_and_pending_gauge() -> None:
    a = parse_metrics_text(triton(100, 5_000_000))
    b = parse_metrics_text(triton(130, 11_000_000, queue_us=600_000, tokens=900))
    load = pod_load(a, b, 2.0)
    assert load is not None
    assert load.inflight == pytest.approx(3.0)  # 6 s of request time in 2 s
    assert load.requests == 30 and load.queue_time_us == pytest.approx(20_000)
    assert load.tokens_per_s == pytest.approx(450)
    burst = pod_load(a, parse_metrics_text(triton(100, 5_000_000, pending=9)), 2.0)
    assert burst is not None and burst.inflight == 9  # queued now, nothing finished yet


def test_counter_reset_counts_from_zero() -> None:
    a = parse_metrics_text(triton(500, 90_000_000))
    b = parse_metrics_text(triton(10, 2_000_000))  # the pod restarted
    load = pod_load(a, b, 1.0)
    assert load is not None and load.inflight == pytest.approx(2.0) and load.requests == 10


def test_model_load_sums_additive_metrics_and_unknown_is_none() -> None:
    a = parse_metrics_text(triton(0, 0))
    p1 = pod_load(a, parse_metrics_text(triton(10, 4_000_000, queue_us=100_000)), 1.0)
    p2 = pod_load(a, parse_metrics_text(triton(10, 2_000_000, queue_us=300_000)), 1.0)
    assert p1 and p2
    assert model_load({"a": p1, "b": p2}, "inflightRequests") == pytest.approx(6.0)
    assert model_load({"a": p1, "b": p2}, "queueTimeMicroseconds") == pytest.approx(20_000)
    assert model_load({}, "inflightRequests") is None
    assert pod_load(None, a, 1.0) is None


def test_policy_from_spec_defaults_target_to_concurrency() -> None:
    spec = InferenceModelSpec.from_dict({"source": {"uri": "builtin://tiny-llama"},
                                        "scaling": {"minReplicas": 0, "maxReplicas": 5,
                                                    "scaleToZero": {"enabled": True, "idleSeconds": 60}}})
    p = policy_from_spec(spec.scaling, concurrency=6)
    assert (p.min_replicas, p.max_replicas, p.target, p.scale_to_zero, p.idle_seconds) == (0, 5, 6.0, True, 60.0)


def model(managed: list[dict[str, object]], annotations: dict[str, str] | None = None) -> dict[str, object]:
    return {"metadata": {"name": "chat", "creationTimestamp": "2026-11-01T09:00:00Z",
                         "annotations": annotations or {}, "managedFields": managed}}


def entry(manager: str, at: datetime, subresource: str | None = None) -> dict[str, object]:
    e: dict[str, object] = {"manager": manager, "operation": "Update", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "fieldsV1": {"f:spec": {"f:scaling": {"f:replicas": {}}}}}
    if subresource:
        e["subresource"] = subresource
    return e


def test_manual_edit_defers_then_autoscaler_resumes() -> None:
    m = model([entry("deepserve-autoscaler", T0), entry("kubectl", T0 + timedelta(seconds=30), "scale")])
    own = detect_owner(m, [], T0 + timedelta(seconds=60), manual_hold_s=600)
    assert own.owner == EXTERNAL and "kubectl" in own.reason
    assert detect_owner(m, [], T0 + timedelta(seconds=700), manual_hold_s=600).owner == DEEPSERVE
    newer = model([entry("kubectl", T0), entry("deepserve-autoscaler", T0 + timedelta(seconds=5), "scale")])
    assert detect_owner(newer, [], T0 + timedelta(seconds=10)).owner == DEEPSERVE


def test_hpa_or_keda_or_annotation_owns_it() -> None:
    hpas = [{"metadata": {"name": "keda-hpa-chat"},
             "spec": {"scaleTargetRef": {"kind": "InferenceModel", "name": "chat"}}}]
    own = detect_owner(model([]), hpas, T0)
    assert own.owner == EXTERNAL and "KEDA" in own.reason
    other = [{"metadata": {"name": "x"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "chat"}}}]
    assert detect_owner(model([]), other, T0).owner == DEEPSERVE
    forced = model([], {"deepserve.io/autoscaler": "external"})
    assert detect_owner(forced, [], T0).owner == EXTERNAL


def test_replicas_written_at_creation_are_not_an_edit() -> None:
    m = model([entry("kubectl-client-side-apply", datetime(2026, 11, 1, 9, 0, tzinfo=UTC))])
    assert detect_owner(m, [], datetime(2026, 11, 1, 9, 1, tzinfo=UTC)).owner == DEEPSERVE


@dataclass(frozen=True)
class Pool:
    name: str
    free_gpus: int
    gpus_per_node: int = 8
    nodes: int = 1
    max_nodes: int = 0


@dataclass(frozen=True)
class Cand:
    pool: str
    gpus_per_replica: int = 2
    rejected_reason: str | None = None


def test_capacity_caps_and_says_so() -> None:
    v = check_capacity(want=6, current=2, scheduled=2, gpus_per_replica=2, pool=Pool("a100", free_gpus=4))
    assert v.replicas == 4 and v.move_to is None
    assert v.message and "NoCapacity" in v.message and "a100" in v.message and "needs 6" in v.message
    assert check_capacity(3, 2, 2, 2, Pool("a100", 4)).message is None
    assert check_capacity(1, 4, 4, 2, Pool("a100", 0)).replicas == 1  # scale-down always passes


def test_pool_that_adds_nodes_has_room() -> None:
    v = check_capacity(6, 2, 2, 2, Pool("karp", free_gpus=0, nodes=1, max_nodes=2))
    assert v.replicas == 6 and v.message is None


def test_next_pool_only_when_allowed_and_never_back() -> None:
    offers = {"a100": Pool("a100", 0), "h100": Pool("h100", 2), "l40s": Pool("l40s", 16)}
    ranked = [Cand("a100"), Cand("h100"), Cand("bad", rejected_reason="too small"), Cand("l40s")]
    v = check_capacity(6, 2, 2, 2, offers["a100"], ranked, offers, allow_move=True)
    assert v.move_to == "l40s" and v.replicas == 2
    assert check_capacity(6, 2, 2, 2, offers["a100"], ranked, offers, allow_move=False).move_to is None
    again = check_capacity(6, 2, 2, 2, offers["a100"], ranked, offers, allow_move=True, tried=frozenset({"l40s"}))
    assert again.move_to is None and again.message and "no alternative" in again.message


def test_version_figures_side_by_side() -> None:
    from deepserve.operator.autoscaler.io import PodEndpoint
    from deepserve.operator.autoscaler.report import format_table, version_figures

    a = parse_metrics_text(triton(0, 0))
    b = parse_metrics_text(triton(20, 2_000_000, tokens=400))
    model = {"status": {"versions": [{"name": "a", "weight": 80, "replicas": 2},
                                     {"name": "b", "weight": 20, "replicas": 1}]}}
    pods = [PodEndpoint("1", "m-a-1", "a", "10.0.0.1", True, "n"), PodEndpoint("2", "m-a-2", "a", "", False, "")]
    load = pod_load(a, b, 2.0)
    assert load is not None
    rows = version_figures(model, pods, {"1": load}, {"1": b})
    assert [(r.version, r.ready, r.desired) for r in rows] == [("a", 1, 2), ("b", 0, 1)]
    assert rows[0].rps == pytest.approx(10) and rows[0].latency_ms == pytest.approx(100)
    assert rows[0].tokens_per_s == pytest.approx(200) and rows[0].generated_tokens == 400
    table = format_table(rows)
    assert table.splitlines()[1].split()[:3] == ["a", "80%", "1/2"]


def test_gateway_routes_from_cluster_objects() -> None:
    from deepserve.operator.gateway.discovery import routes_from_objects

    models = [{"metadata": {"name": "chat"}, "spec": {"source": {"uri": "builtin://tiny-llama"}, "versions": [
        {"name": "a", "weight": 90}, {"name": "b", "weight": 10}]}},
        {"metadata": {"name": "bad"}, "spec": {"source": {"uri": "nope"}}}]

    def p(version: str, ip: str, ready: bool) -> dict[str, object]:
        return {"metadata": {"labels": {"deepserve.io/model": "chat", "deepserve.io/version": version}},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]}}

    routes = routes_from_objects(models, [p("a", "10.0.0.1", True), p("a", "10.0.0.2", False),
                                          p("b", "10.0.0.3", True)])
    assert [r.name for r in routes] == ["chat"]  # "bad" does not validate: left out
    assert [(v.name, v.weight, v.kserve_upstreams) for v in routes[0].versions] == [
        ("a", 90, ("http://10.0.0.1:8000",)), ("b", 10, ("http://10.0.0.3:8000",))]


def test_same_second_write_is_believed_external() -> None:
    m = model([entry("deepserve-activator", T0, "scale"), entry("kubectl", T0, "scale")])
    assert detect_owner(m, [], T0 + timedelta(seconds=1)).owner == EXTERNAL
    m = model([entry("kubectl", T0, "scale"), entry("deepserve-activator", T0, "scale")])
    assert detect_owner(m, [], T0 + timedelta(seconds=1)).owner == EXTERNAL
