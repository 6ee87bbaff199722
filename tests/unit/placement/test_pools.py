"""Pool discovery from Node/Pod/GPUNodePool dicts, and pools files."""

from __future__ import annotations

from typing import Any

import pytest

from deepserve.operator.placement import discover_pools, pools_from_document

pytestmark = pytest.mark.unit

GFD = "nvidia.com/gpu.product"


def node(name: str, labels: dict[str, str], gpus: int, resource: str = "nvidia.com/gpu",
         ready: bool = True) -> dict[str, Any]:
    alloc = {"cpu": "32", resource: str(gpus)} if gpus else {"cpu": "8"}
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": alloc, "capacity": alloc,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(node_name: str, gpus: int, phase: str = "Running", init: int = 0) -> dict[str, Any]:
    res = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {"nodeName": node_name, "containers": [{"resources": res}]}
    if init:
        spec["initContainers"] = [{"resources": {"requests": {"nvidia.com/gpu": str(init)}}}]
    return {"spec": spec, "status": {"phase": phase}}


def gnp(name: str, selector: dict[str, str], acc: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"nodeSelector": selector, "acceleratorId": acc, **spec}}


def dev_cluster() -> list[dict[str, Any]]:
    """The lead's local cluster: A100 x8, H100 x8, L4 x1 per node, and a CPU pool."""
    return [
        node("a100-0", {GFD: "NVIDIA-A100-SXM4-80GB", "deepserve.io/pool": "a100"}, 8),
        node("a100-1", {GFD: "NVIDIA-A100-SXM4-80GB", "deepserve.io/pool": "a100"}, 8),
        node("h100-0", {GFD: "NVIDIA-H100-80GB-HBM3", "deepserve.io/pool": "h100"}, 8),
        node("l4-0", {GFD: "NVIDIA-L4", "deepserve.io/pool": "l4"}, 1),
        node("l4-1", {GFD: "NVIDIA-L4", "deepserve.io/pool": "l4"}, 1),
        node("cpu-0", {"deepserve.io/pool": "cpu"}, 0),
    ]


def test_dev_cluster_pools_are_discovered_from_gfd_labels_and_pool_label() -> None:
    found = discover_pools(dev_cluster(), [], [])
    by_name = {p.name: p for p in found.pools}
    assert set(by_name) == {"a100", "h100", "l4"}  # the CPU pool offers no accelerator
    assert by_name["a100"].accelerator_id == "nvidia-a100-sxm4-80gb"
    assert (by_name["a100"].nodes, by_name["a100"].free_gpus) == (2, 16)
    assert by_name["h100"].accelerator_id == "nvidia-h100-sxm5-80gb"
    assert (by_name["l4"].gpus_per_node, by_name["l4"].free_gpus) == (1, 2)
    assert by_name["l4"].node_selector == {"deepserve.io/pool": "l4"}
    assert by_name["a100"].price_per_gpu_hour is None and found.unknown == []


def test_bound_unfinished_pods_consume_gpus_per_node() -> None:
    pods = [pod("a100-0", 2), pod("a100-0", 1, init=4), pod("a100-1", 8, phase="Succeeded"),
            pod("h100-0", 8), {"spec": {"containers": []}, "status": {"phase": "Pending"}}]
    by_name = {p.name: p for p in discover_pools(dev_cluster(), pods, []).pools}
    assert by_name["a100"].node_free_gpus == (2, 8)  # 8 - (2 + max(1, init 4))
    assert by_name["h100"].free_gpus == 0


def test_gpu_node_pools_add_price_and_scale_from_zero() -> None:
    pools = [gnp("a100-ondemand", {"deepserve.io/pool": "a100"}, "nvidia-a100-sxm4-80gb",
                 gpusPerNode=8, maxNodes=4, pricePerGpuHour=1.8, currency="USD"),
             gnp("h200-spot", {"deepserve.io/pool": "h200"}, "nvidia-h200-sxm-141gb",
                 gpusPerNode=8, maxNodes=2, pricePerGpuHour=2.5, currency="USD")]
    by_name = {p.name: p for p in discover_pools(dev_cluster(), [], pools).pools}
    a100 = by_name["a100-ondemand"]
    assert (a100.source, a100.nodes, a100.free_gpus, a100.max_nodes) == ("both", 2, 16, 4)
    assert a100.price_per_gpu_hour == 1.8 and "a100" not in by_name
    h200 = by_name["h200-spot"]
    assert (h200.source, h200.nodes, h200.free_gpus, h200.max_nodes) == ("GPUNodePool", 0, 0, 2)
    assert h200.replica_capacity(8) == 2


def test_unknown_accelerators_are_reported_not_guessed() -> None:
    nodes = [*dev_cluster(), node("weird-0", {GFD: "NVIDIA-Imaginary-9000"}, 4)]
    found = discover_pools(nodes, [], [gnp("bad", {"x": "y"}, "no-such-gpu", gpusPerNode=1)])
    assert all(p.name != "bad" for p in found.pools)
    assert len(found.unknown) == 2
    assert "weird-0" in found.unknown[0] and "NVIDIA-Imaginary-9000" in found.unknown[0]
    assert "no-such-gpu" in found.unknown[1]


def test_gke_karpenter_and_amd_labels_group_into_pools() -> None:
    nodes = [
        node("g0", {"cloud.google.com/gke-accelerator": "nvidia-l4",
                    "cloud.google.com/gke-nodepool": "l4-pool"}, 1),
        node("k0", {"karpenter.k8s.aws/instance-gpu-name": "a100",
                    "karpenter.k8s.aws/instance-gpu-memory": "40960",
                    "karpenter.sh/nodepool": "p4d"}, 8),
        node("m0", {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}, 8, "amd.com/gpu"),
        node("down", {GFD: "NVIDIA-L4", "deepserve.io/pool": "l4"}, 1, ready=False),
    ]
    by_name = {p.name: p for p in discover_pools(nodes, [], []).pools}
    assert by_name["l4-pool"].accelerator_id == "nvidia-l4"
    assert by_name["p4d"].accelerator_id == "nvidia-a100-sxm4-40gb"
    mi300 = by_name["amd-instinct-mi300x-x8"]
    assert mi300.node_selector == {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}
    assert (by_name["l4"].nodes, by_name["l4"].free_gpus) == (0, 0)  # NotReady counts nothing


def test_pools_file_formats() -> None:
    doc = {"pools": [{"name": "l4", "acceleratorId": "nvidia-l4", "gpusPerNode": 1, "nodes": 3,
                      "pricePerGpuHour": 0.8}]}
    [p] = pools_from_document(doc)
    assert (p.free_gpus, p.max_nodes, p.currency) == (3, 3, "USD")
    manifest = {"apiVersion": "deepserve.io/v1alpha1", "kind": "GPUNodePool",
                "metadata": {"name": "h100"}, "spec": {"acceleratorId": "nvidia-h100-sxm5-80gb",
                                                       "gpusPerNode": 8, "maxNodes": 2}}
    [m] = pools_from_document(manifest)
    assert (m.name, m.nodes, m.max_nodes) == ("h100", 0, 2)
    with pytest.raises(ValueError, match=r"pools\[0\].*acceleratorId"):
        pools_from_document({"pools": [{"name": "x"}]})


def test_local_dev_cluster_simulated_nodes_resolve() -> None:
    """The nodes `deepserve dev up` creates (lead's builder) become three GPU pools."""
    from pathlib import Path

    nodes_mod = pytest.importorskip("deepserve.operator.dev.nodes")
    pools_file = Path(nodes_mod.__file__).with_name("simulated-pools.yaml")
    nodes = nodes_mod.build_nodes(nodes_mod.load_pools_file(pools_file))
    found = discover_pools(nodes, [], [])
    assert found.unknown == []
    got = {p.name: (p.accelerator_id, p.gpus_per_node) for p in found.pools}
    assert got == {"a100-sxm": ("nvidia-a100-sxm4-80gb", 8),
                   "h100-sxm": ("nvidia-h100-sxm5-80gb", 8), "l4": ("nvidia-l4", 1)}


def pending_pod(selector: dict[str, str], gpus: int) -> dict[str, Any]:
    return {"spec": {"nodeSelector": selector, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": "Pending"}}


def test_pending_pods_count_against_the_pool_their_node_selector_targets() -> None:
    pods = [pending_pod({"deepserve.io/pool": "l4"}, 1), pending_pod({"deepserve.io/pool": "a100"}, 4),
            pending_pod({"deepserve.io/pool": "a100"}, 3), pending_pod({"somewhere": "else"}, 8)]
    by_name = {p.name: p for p in discover_pools(dev_cluster(), pods, []).pools}
    assert (by_name["l4"].free_gpus, sorted(by_name["l4"].node_free_gpus)) == (1, [0, 1])
    # 4 + 3 pending GPUs on two 8-GPU nodes: 9 left in all (where the scheduler puts them is its call)
    assert by_name["a100"].free_gpus == 9 and sum(by_name["a100"].node_free_gpus) == 9
    assert by_name["h100"].free_gpus == 8  # a selector naming no pool takes nothing
    # a pod that finished, or one already bound, is not pending
    done = pending_pod({"deepserve.io/pool": "l4"}, 1) | {"status": {"phase": "Succeeded"}}
    assert {p.name: p for p in discover_pools(dev_cluster(), [done], []).pools}["l4"].free_gpus == 2


def test_reservations_take_gpus_from_the_fullest_nodes_and_never_go_negative() -> None:
    from deepserve.operator.placement import with_reservations

    pools = discover_pools(dev_cluster(), [pod("a100-0", 6)], []).pools
    out = {p.name: p for p in with_reservations(pools, {"a100": 4, "l4": 5})}
    assert (out["a100"].free_gpus, sorted(out["a100"].node_free_gpus)) == (6, [2, 4])
    assert (out["l4"].free_gpus, out["l4"].node_free_gpus) == (0, (0, 0))
    assert out["h100"] == {p.name: p for p in pools}["h100"]  # untouched
    assert out["l4"].replica_capacity(1) == 0
