"""PoolDiscovery (discovery with memory of unchanged objects) == discover_pools, step by step."""

from __future__ import annotations

import random

import pytest

from deepserve.operator.placement import discover_pools
from deepserve.operator.placement.discovery import PoolDiscovery

pytestmark = pytest.mark.unit

KINDS = [  # labels, resource, GPUs per node
    ({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "karpenter.sh/nodepool": "h100"}, "nvidia.com/gpu", 8),
    ({"nvidia.com/gpu.product": "NVIDIA-L4", "cloud.google.com/gke-nodepool": "l4"}, "nvidia.com/gpu", 1),
    ({"amd.com/gpu.product-name": "AMD_Instinct_MI300X"}, "amd.com/gpu", 8),
    ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, "nvidia.com/mig-1g.5gb", 7),
    ({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "team": "x"}, "nvidia.com/gpu", 8),
    ({"nvidia.com/gpu.product": "NVIDIA-L4", "karpenter.sh/nodepool": "h100"}, "nvidia.com/gpu", 1),  # mismatch
    ({"vendor.example/gpu": "mystery"}, "nvidia.com/gpu", 4),  # unknown accelerator
    ({}, "", 0),  # CPU node
]


def node(i: int, rng: random.Random) -> dict:
    labels, resource, gpus = rng.choice(KINDS)
    alloc = {"cpu": "16"} | ({resource: str(gpus)} if resource else {})
    ready = "True" if rng.random() > 0.1 else "False"
    return {"metadata": {"name": f"n{i}", "labels": dict(labels)},
            "spec": {"unschedulable": rng.random() < 0.03},
            "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": ready}]}}


def pod(i: int, nodes: list[dict], rng: random.Random) -> dict:
    target = rng.choice(nodes)["metadata"]["name"] if rng.random() < 0.8 else ""
    return {"metadata": {"name": f"p{i}", "namespace": "ns"},
            "spec": {"nodeName": target, "nodeSelector": {"cloud.google.com/gke-nodepool": "l4"},
                     "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(rng.randint(1, 4))}}}]},
            "status": {"phase": rng.choice(["Running", "Pending", "Succeeded"])}}


def declared(rng: random.Random) -> list[dict]:
    out = [{"metadata": {"name": "team-x"}, "spec": {
        "nodeSelector": {"team": "x"}, "acceleratorId": "nvidia-a100-sxm4-80gb", "gpusPerNode": 8,
        "pricePerGpuHour": round(rng.uniform(1, 3), 2)}}]
    if rng.random() < 0.5:
        out.append({"metadata": {"name": "l4"}, "spec": {
            "nodeSelector": {"cloud.google.com/gke-nodepool": "l4"}, "acceleratorId": "nvidia-l4",
            "gpusPerNode": 1, "maxNodes": 40}})
    return out


def test_pool_discovery_equals_discover_pools_as_objects_change() -> None:
    rng = random.Random(21)
    nodes = [node(i, rng) for i in range(300)]
    pods = [pod(i, nodes, rng) for i in range(100)]
    pools = declared(rng)
    discovery = PoolDiscovery()
    assert discovery(list(nodes), list(pods), list(pools)) == discover_pools(nodes, pods, pools)
    assert discovery.full_reads == len(nodes)
    for step in range(60):
        what = rng.choice(["node", "node", "pod", "remove", "pools", "nothing"])
        if what == "node":  # a watch event replaces the object
            nodes[rng.randrange(len(nodes))] = node(rng.randrange(400), rng)
        elif what == "pod":
            pods.append(pod(1000 + step, nodes, rng))
        elif what == "remove":
            nodes.pop(rng.randrange(len(nodes)))
        elif what == "pools":  # new GPUNodePool objects: every node is read again
            pools = declared(rng)
        before = discovery.full_reads
        got = discovery(list(nodes), list(pods), list(pools))
        want = discover_pools(nodes, pods, pools)
        assert got == want, (step, what)
        read = discovery.full_reads - before
        if what in ("nothing", "pod", "remove"):
            assert read == 0, (step, what, read)  # unchanged nodes are not read again
        elif what == "node":
            assert read <= 1, (step, what, read)
    assert any(p.source == "both" for p in got.pools) and got.unknown
