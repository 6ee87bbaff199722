"""Models placed at the same moment see each other's GPUs: no pool is promised twice."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fake_api import FakeApi
from model_cases import make_model

from deepserve.operator.builders import Settings
from deepserve.operator.controller import handlers
from deepserve.operator.controller.handlers import ControllerState, run_reconcile

pytestmark = pytest.mark.unit
GFD = "nvidia.com/gpu.product"


def node(name: str, pool: str, product: str, gpus: int) -> dict[str, Any]:
    alloc = {"cpu": "8", "nvidia.com/gpu": str(gpus)}
    return {"metadata": {"name": name, "labels": {GFD: product, "cloud.google.com/gke-nodepool": pool}},
            "spec": {}, "status": {"allocatable": alloc, "capacity": alloc,
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


def indexes(pods: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    nodes = [node(f"l4-{i}", "l4", "NVIDIA-L4", 1) for i in range(3)]
    nodes += [node(f"a100-{i}", "a100", "NVIDIA-A100-SXM4-80GB", 8) for i in range(2)]
    declared = [{"metadata": {"name": pool}, "spec": {"nodeSelector": {"cloud.google.com/gke-nodepool": pool},
                                                      "acceleratorId": acc, "pricePerGpuHour": price}}
                for pool, acc, price in (("l4", "nvidia-l4", 0.71), ("a100", "nvidia-a100-sxm4-80gb", 5.07))]
    return {"ds_nodes": {None: nodes}, "ds_gpu_pods": {None: list(pods or [])}, "ds_pools": {None: declared},
            "ds_model_pods": {}, "ds_deployment_states": {}}


def model(name: str) -> dict[str, Any]:
    obj = make_model(name, "ns").obj()
    obj["metadata"].update(uid=f"uid-{name}", generation=1)
    obj["status"] = {}
    return obj


@pytest.fixture(autouse=True)
def no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers.kopf, "event", lambda *a, **k: None)


def placed(state: ControllerState, names: list[str]) -> dict[str, str]:
    return {n: state.last_status[f"uid-{n}"]["placement"]["pool"] for n in names}


def test_models_created_together_do_not_overcommit_the_cheapest_pool() -> None:
    state = ControllerState(kube=FakeApi(), settings=Settings())  # type: ignore[arg-type]
    idx, names = indexes(), [f"r{i}" for i in range(6)]
    threads = [threading.Thread(target=run_reconcile, args=(model(n), idx, state)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pools = placed(state, names)
    assert sum(p == "l4" for p in pools.values()) == 3, pools  # the 3 single-GPU L4 nodes, then elsewhere
    assert all(p in ("l4", "a100") for p in pools.values()), pools
    assert {r.pool for r in state.reservations.values()} == set(pools.values())


def test_a_reservation_ends_when_the_models_pods_exist_and_pending_pods_hold_the_pool() -> None:
    state = ControllerState(kube=FakeApi(), settings=Settings())  # type: ignore[arg-type]
    run_reconcile(model("first"), indexes(), state)
    assert placed(state, ["first"]) == {"first": "l4"} and "uid-first" in state.reservations
    # its pod now exists, still Pending (not bound), targeting the l4 pool
    pod = {"metadata": {"name": "first-main-x", "namespace": "ns", "labels": {"deepserve.io/model": "first"}},
           "spec": {"nodeName": "", "nodeSelector": {"cloud.google.com/gke-nodepool": "l4"},
                    "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
           "status": {"phase": "Pending"}}
    idx = indexes([pod])
    assert state.reserved(idx["ds_gpu_pods"][None]) == {}
    assert "uid-first" not in state.reservations
    for n in ("second", "third", "fourth"):
        run_reconcile(model(n), idx, state)
    assert list(placed(state, ["second", "third", "fourth"]).values()).count("l4") == 2
