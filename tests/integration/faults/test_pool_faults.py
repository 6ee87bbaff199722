"""GPUNodePool faults while models run: a pool deleted under its models (re-planned onto
another allowed pool, with an Event, never left Pending silently), and a pool's price
changed (running replicas are not churned; new models see the new price)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fault_checks import must_get, ready
from model_cases import make_model
from ops_helpers import IM, condition, wait_for

from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]
POOL_API = "deepserve.io/v1alpha1"
A100 = ({"cloud.google.com/gke-nodepool": "a100-sxm"}, "nvidia-a100-sxm4-80gb")
H100 = ({"karpenter.sh/nodepool": "h100-sxm"}, "nvidia-h100-sxm5-80gb")


@pytest.fixture
def pools(kube: Kube, namespace: str) -> Iterator[dict[str, str]]:
    """Two declared pools over the simulated A100 and H100 nodes, the A100 one far cheaper."""
    names = {"a100": f"{namespace[-5:]}-a100", "h100": f"{namespace[-5:]}-h100"}
    for key, ((selector, accel), price) in {"a100": (A100, 0.01), "h100": (H100, 5.0)}.items():
        kube.create({"apiVersion": POOL_API, "kind": "GPUNodePool", "metadata": {"name": names[key]},
                     "spec": {"nodeSelector": selector, "acceleratorId": accel, "gpusPerNode": 8, "pricePerGpuHour": price,
                              "currency": "USD"}})
    yield names
    for name in names.values():
        kube.delete(POOL_API, "GPUNodePool", name)


def _pods(kube: Kube, namespace: str, model: str) -> list[dict[str, Any]]:
    return kube.list("v1", "Pod", namespace, label_selector=f"deepserve.io/model={model}")


def _pool_of_nodes(kube: Kube, pods: list[dict[str, Any]]) -> set[str]:
    """The provisioner pool label of the nodes ``pods`` run on."""
    out = set()
    for pod in pods:
        labels = must_get(kube, "v1", "Node", pod["spec"]["nodeName"])["metadata"]["labels"]
        out.add(labels.get("cloud.google.com/gke-nodepool") or labels.get("karpenter.sh/nodepool", "?"))
    return out


def _model(name: str, namespace: str, pools: dict[str, str]) -> dict[str, Any]:
    return make_model(name, namespace).set("placement.allowedPools", [pools["a100"], pools["h100"]]).obj()


def test_pool_deleted_while_serving_is_replanned_with_an_event(
        kube: Kube, namespace: str, start_operator: Any, pools: dict[str, str]) -> None:
    op = start_operator()
    kube.create(_model("served", namespace, pools))
    obj = ready(kube, namespace, "served")
    assert obj["status"]["placement"]["pool"] == pools["a100"]
    assert _pool_of_nodes(kube, _pods(kube, namespace, "served")) == {"a100-sxm"}
    kube.delete(POOL_API, "GPUNodePool", pools["a100"])  # its nodes remain, but it is no longer allowed

    def moved() -> dict[str, Any] | None:
        m = kube.get(IM, "InferenceModel", "served", namespace) or {}
        placed = ((m.get("status") or {}).get("placement") or {}).get("pool")
        return m if placed == pools["h100"] and condition(m, "Ready").get("status") == "True" else None

    try:
        obj = wait_for(moved, f"the model re-planned onto {pools['h100']} and Ready", 60)
    except pytest.fail.Exception:
        status = (kube.get(IM, "InferenceModel", "served", namespace) or {}).get("status")
        pytest.fail(f"not re-planned after its pool was deleted; status {status}; operator log:\n{op.log()[-4000:]}")
    assert condition(obj, "Scheduled").get("status") == "True"
    wait_for(lambda: _pool_of_nodes(kube, _pods(kube, namespace, "served")) == {"h100-sxm"},
             "the model's pods all on the H100 nodes", 60)
    events = [e for e in kube.list("v1", "Event", namespace)
              if e["involvedObject"].get("name") == "served" and e.get("reason") == "Placed"]
    assert any(pools["h100"] in e["message"] for e in events), [e["message"] for e in events]


def test_pool_price_change_does_not_churn_running_replicas(
        kube: Kube, namespace: str, start_operator: Any, pools: dict[str, str]) -> None:
    start_operator()
    kube.create(_model("steady", namespace, pools))
    ready(kube, namespace, "steady")
    deployment = must_get(kube, "apps/v1", "Deployment", "steady-main", namespace)
    replica_sets = sorted(r["metadata"]["uid"] for r in kube.list("apps/v1", "ReplicaSet", namespace))
    pods = sorted(p["metadata"]["uid"] for p in _pods(kube, namespace, "steady"))
    kube.request("PATCH", f"/apis/{POOL_API}/gpunodepools/{pools['a100']}", body={"spec": {"pricePerGpuHour": 1000}},
                 content_type="application/merge-patch+json")
    # the operator sees the new price: a model created now goes to the other pool...
    kube.create(_model("fresh", namespace, pools))
    fresh = ready(kube, namespace, "fresh")
    assert fresh["status"]["placement"]["pool"] == pools["h100"]
    time.sleep(11)  # ...and the running model has had a periodic resync (10 s) since
    steady = must_get(kube, IM, "InferenceModel", "steady", namespace)
    assert steady["status"]["placement"]["pool"] == pools["a100"]
    now = must_get(kube, "apps/v1", "Deployment", "steady-main", namespace)["metadata"]
    assert (now["uid"], now["generation"]) == (deployment["metadata"]["uid"], deployment["metadata"]["generation"])
    now_rs = sorted(r["metadata"]["uid"] for r in kube.list("apps/v1", "ReplicaSet", namespace)
                    if r["metadata"]["labels"].get("deepserve.io/model") == "steady")
    assert now_rs == replica_sets
    assert sorted(p["metadata"]["uid"] for p in _pods(kube, namespace, "steady")) == pods
