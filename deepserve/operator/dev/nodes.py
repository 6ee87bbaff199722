"""Simulated GPU nodes for the local cluster, built from a declarative pools file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}


class PoolsFileError(ValueError):
    """The simulated pools file is invalid; the message names the field."""


@dataclass(frozen=True)
class GpuSpec:
    product: str
    memory_mib: int
    count: int
    family: str = ""


@dataclass(frozen=True)
class SimulatedPool:
    """One pool of identical simulated nodes."""

    name: str
    nodes: int
    pool_label: dict[str, str]
    cpu: str = "16"
    memory: str = "64Gi"
    gpu: GpuSpec | None = None
    labels: dict[str, str] = field(default_factory=dict)


def _req(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise PoolsFileError(f"{where}.{key} is required")
    return d[key]


def parse_pools(doc: dict[str, Any]) -> list[SimulatedPool]:
    """Validate a pools document and return typed pools."""
    if not isinstance(doc, dict) or not isinstance(doc.get("pools"), list):
        raise PoolsFileError("pools: a list of pools is required")
    out: list[SimulatedPool] = []
    names: set[str] = set()
    for i, p in enumerate(doc["pools"]):
        where = f"pools[{i}]"
        name = str(_req(p, "name", where))
        if name in names:
            raise PoolsFileError(f"{where}.name {name!r} is duplicated")
        names.add(name)
        nodes = _req(p, "nodes", where)
        if not isinstance(nodes, int) or nodes < 1:
            raise PoolsFileError(f"{where}.nodes must be a positive integer, got {nodes!r}")
        pool_label = _req(p, "poolLabel", where)
        if not isinstance(pool_label, dict) or len(pool_label) != 1:
            raise PoolsFileError(f"{where}.poolLabel must map exactly one label key to a value")
        gpu = None
        if "gpu" in p:
            g = p["gpu"]
            count = _req(g, "count", f"{where}.gpu")
            if not isinstance(count, int) or count < 1:
                raise PoolsFileError(f"{where}.gpu.count must be a positive integer")
            gpu = GpuSpec(str(_req(g, "product", f"{where}.gpu")),
                          int(_req(g, "memoryMiB", f"{where}.gpu")), count, str(g.get("family", "")))
        out.append(SimulatedPool(
            name=name, nodes=nodes, pool_label={str(k): str(v) for k, v in pool_label.items()},
            cpu=str(p.get("cpu", "16")), memory=str(p.get("memory", "64Gi")), gpu=gpu,
            labels={str(k): str(v) for k, v in (p.get("labels") or {}).items()},
        ))
    return out


def load_pools_file(path: Path) -> list[SimulatedPool]:
    """Read and validate a pools YAML file."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise PoolsFileError(f"cannot read pools file {path}: {e}") from e
    return parse_pools(doc)


def build_nodes(pools: list[SimulatedPool]) -> list[dict[str, Any]]:
    """Node objects (with status) for every simulated node, each with its own loopback podCIDR."""
    nodes = []
    index = 0
    for pool in pools:
        for n in range(pool.nodes):
            index += 1
            name = f"{pool.name}-{n}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": "local-a",
                "type": "kwok",
                **pool.pool_label,
                **pool.labels,
            }
            capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110"}
            taints = []
            if pool.gpu:
                labels.update({
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": pool.gpu.product,
                    "nvidia.com/gpu.memory": str(pool.gpu.memory_mib),
                    "nvidia.com/gpu.count": str(pool.gpu.count),
                    "nvidia.com/gpu.family": pool.gpu.family or "unknown",
                })
                capacity["nvidia.com/gpu"] = str(pool.gpu.count)
                taints.append(dict(GPU_TAINT))
            nodes.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": dict(KWOK_ANNOTATION)},
                "spec": {"podCIDR": f"127.10.{index}.0/24", "podCIDRs": [f"127.10.{index}.0/24"],
                         "taints": taints},
                "status": {
                    "capacity": capacity,
                    "allocatable": dict(capacity),
                    "addresses": [{"type": "InternalIP", "address": f"127.9.0.{index}"},
                                  {"type": "Hostname", "address": name}],
                },
            })
    return nodes
