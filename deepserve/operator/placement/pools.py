"""Node pools: what the planner may place on, from Nodes, Pods and GPUNodePool objects.

Inputs are plain dicts as the Kubernetes API returns them; nothing here talks to a cluster.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from deepserve.engine.hardware import (
    DEEPSERVE_LABEL,
    LABEL_KEYS,
    Accelerator,
    Catalog,
    load_catalog,
)
from deepserve.operator.placement.gpus import (
    gpu_quantity,
    mig_compute_fraction,
    mig_profile,
    mig_slice_memory_gib,
    pod_gpus,
)

log = logging.getLogger(__name__)

POOL_LABELS: tuple[str, ...] = (
    "deepserve.io/pool", "cloud.google.com/gke-nodepool", "karpenter.sh/nodepool",
    "eks.amazonaws.com/nodegroup", "kubernetes.azure.com/agentpool", "agentpool",
)
"""Node labels that name the pool a node belongs to, in order of preference."""


@dataclass(frozen=True)
class PoolOffer:
    """A pool of identical accelerator nodes and what it can still take."""

    name: str
    accelerator_id: str
    gpus_per_node: int
    nodes: int
    free_gpus: int
    price_per_gpu_hour: float | None = None
    currency: str = "USD"
    max_nodes: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    source: str = "nodes"
    node_free_gpus: tuple[int, ...] = ()
    """Free GPUs per existing node; when given, replicas must fit within one node each."""
    partition: str = ""
    """MIG profile (``1g.5gb``) when every GPU of the pool is a slice of the catalog device."""
    gpu_resource: str = ""
    """The extended resource a replica's pod requests (``amd.com/gpu``, ``nvidia.com/mig-1g.5gb``:
    what the pool's nodes advertise); "" = the catalog vendor's whole-device resource."""

    def accelerator(self, acc: Accelerator) -> Accelerator:
        """What one GPU of this pool is: ``acc``, or for a MIG slice its own memory, a share of
        the card's bandwidth (by memory slices) and compute (by compute slices), and no
        interconnect (slices cannot form a tensor-parallel group)."""
        if not self.partition:
            return acc
        gb = mig_slice_memory_gib(f"nvidia.com/mig-{self.partition}")
        if gb is None:
            raise ValueError(f"pool {self.name}: partition {self.partition!r} is not a MIG profile")
        memory = gb * 1e9 / 2**30
        compute = mig_compute_fraction(self.partition)
        return replace(
            acc, name=f"{acc.name} MIG {self.partition}", memory_gib=memory,
            bandwidth_gbs=acc.bandwidth_gbs * min(1.0, memory / acc.memory_gib),
            tflops={k: v * compute for k, v in acc.tflops.items()}, interconnect_gbs=0.0)

    @functools.cached_property
    def free_histogram(self) -> tuple[tuple[int, int], ...]:
        """``(free GPUs, nodes with that many)`` over ``node_free_gpus``: the per-pool aggregate
        computed once, so planning a model costs O(GPUs per node), not O(nodes)."""
        return tuple(sorted(Counter(self.node_free_gpus).items()))

    def whole_free_nodes(self) -> int:
        """Existing nodes with every GPU free (what a multi-node replica takes)."""
        if not self.node_free_gpus:
            return self.free_gpus // max(self.gpus_per_node, 1)
        return sum(n for free, n in self.free_histogram if free >= self.gpus_per_node)

    def replica_capacity(self, gpus_per_replica: int) -> int:
        """How many replicas of ``gpus_per_replica`` GPUs fit now plus by scaling to max_nodes."""
        if gpus_per_replica <= 0 or gpus_per_replica > self.gpus_per_node:
            return 0
        if self.node_free_gpus:
            now = sum(n * (free // gpus_per_replica) for free, n in self.free_histogram)
        else:
            now = self.free_gpus // gpus_per_replica
        growth = max(0, self.max_nodes - self.nodes) * (self.gpus_per_node // gpus_per_replica)
        return now + growth


@dataclass
class DiscoveredPools:
    """Pools found in a cluster, plus warnings for what could not be identified."""

    pools: list[PoolOffer]
    unknown: list[str]


def _spec_offer(name: str, spec: Mapping[str, Any], source: str, nodes: int = 0,
                free: int = 0, node_free: tuple[int, ...] = ()) -> PoolOffer:
    price = spec.get("pricePerGpuHour")
    gpn = int(spec.get("gpusPerNode") or 0)
    partition = str(spec.get("migProfile") or "")
    return PoolOffer(
        name=name, accelerator_id=str(spec.get("acceleratorId", "")), gpus_per_node=gpn,
        nodes=nodes, free_gpus=free,
        price_per_gpu_hour=float(price) if price is not None else None,
        currency=str(spec.get("currency") or "USD"), max_nodes=int(spec.get("maxNodes") or nodes),
        node_selector=dict(spec.get("nodeSelector") or {}), source=source,
        node_free_gpus=node_free, partition=partition,
        gpu_resource=f"nvidia.com/mig-{partition}" if partition else "",
    )


def pools_from_document(doc: Any) -> list[PoolOffer]:
    """Read pools from a parsed pools file: ``{pools: [...]}``, a list, or GPUNodePool manifests.

    Each entry uses GPUNodePool spec keys (``acceleratorId``, ``gpusPerNode``, ``maxNodes``,
    ``pricePerGpuHour``, ``currency``, ``nodeSelector``) plus ``name``, ``nodes`` and
    ``freeGpus`` (default: every GPU of ``nodes`` nodes is free). Raises ValueError naming
    the entry and field.
    """
    entries = doc.get("pools", doc.get("items")) if isinstance(doc, Mapping) else doc
    if isinstance(doc, Mapping) and doc.get("kind") == "GPUNodePool":
        entries = [doc]
    if not isinstance(entries, list):
        raise ValueError("pools file: expected a 'pools' list or GPUNodePool manifests")
    offers = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"pools[{i}]: expected a mapping")
        spec = entry.get("spec", entry)
        name = entry.get("metadata", {}).get("name") if "spec" in entry else entry.get("name")
        if not name or not spec.get("acceleratorId") or not spec.get("gpusPerNode"):
            raise ValueError(f"pools[{i}]: 'name', 'acceleratorId' and 'gpusPerNode' are required")
        price = spec.get("pricePerGpuHour")
        if price is not None and (not isinstance(price, int | float) or price < 0):
            raise ValueError(f"pools[{i}].pricePerGpuHour: must be a number >= 0, got {price!r}")
        profile = spec.get("migProfile")
        if profile is not None and mig_profile(f"nvidia.com/mig-{profile}") is None:
            raise ValueError(f"pools[{i}].migProfile: expected <compute>g.<memory>gb such as "
                             f"1g.5gb, got {profile!r}")
        nodes = int(spec.get("nodes", 0))
        free = int(spec.get("freeGpus", nodes * int(spec["gpusPerNode"])))
        offers.append(_spec_offer(str(name), spec, "GPUNodePool", nodes, free))
    return offers


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _node_ready(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return True  # no conditions reported (fresh fake node): count it


def _pending(pod: Mapping[str, Any]) -> bool:
    """A pod the scheduler has not bound yet (and that has not finished)."""
    return not (pod.get("spec") or {}).get("nodeName") and (pod.get("status") or {}).get("phase") not in (
        "Succeeded", "Failed")


def _take(free: list[int], gpus: int) -> None:
    """Count ``gpus`` against a pool's per-node free list, whole replicas on the fullest nodes first."""
    for _ in range(len(free)):
        if gpus <= 0:
            return
        i = max(range(len(free)), key=free.__getitem__)
        step = min(gpus, free[i])
        if step <= 0:
            break
        free[i] -= step
        gpus -= step


def with_reservations(pools: Iterable[PoolOffer], reserved: Mapping[str, int]) -> list[PoolOffer]:
    """Pools less GPUs already promised to placements whose pods do not exist yet.

    ``reserved`` maps pool name to GPUs; each is taken from the pool's fullest nodes first.
    """
    out = []
    for pool in pools:
        gpus = int(reserved.get(pool.name, 0))
        if gpus <= 0:
            out.append(pool)
            continue
        node_free = list(pool.node_free_gpus)
        _take(node_free, gpus)
        out.append(replace(pool, free_gpus=max(0, pool.free_gpus - gpus), node_free_gpus=tuple(node_free)))
    return out


def _used_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    used: dict[str, int] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if node and phase not in ("Succeeded", "Failed"):
            used[node] = used.get(node, 0) + pod_gpus(pod)
    return used


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _identifying_label(catalog: Catalog, labels: Mapping[str, str], acc_id: str) -> dict[str, str]:
    """The node label that named the accelerator, usable as the pool's node selector."""
    for key in (DEEPSERVE_LABEL, *LABEL_KEYS.values()):
        if key in labels and any(a.id == acc_id for a in catalog.candidates_by_label(key, labels[key])):
            return {key: labels[key]}
    return {DEEPSERVE_LABEL: acc_id}


@dataclass
class _Group:
    selector: dict[str, str]
    accelerator_id: str
    gpus_per_node: int = 0
    nodes: int = 0
    free: list[int] = field(default_factory=list)
    partition: str = ""
    resource: str = ""


@dataclass(frozen=True)
class NodeFacts:
    """What discovery reads from one GPU node (its pods aside): the pool it joins and why."""

    name: str
    capacity: int
    resource: str
    accelerator_id: str
    partition: str
    pool_name: str
    selector: Mapping[str, str]
    ready: bool


def node_facts(node: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]],
               catalog: Catalog) -> NodeFacts | str | None:
    """The pool ``node`` joins: its facts, a warning (no known accelerator), or None (no GPUs).

    ``declared`` maps GPUNodePool names to their objects, in listing order.
    """
    name = (node.get("metadata") or {}).get("name", "?")
    labels = _labels(node)
    status = node.get("status") or {}
    resource, capacity = gpu_quantity(status.get("allocatable") or status.get("capacity"))
    if capacity <= 0:
        return None  # CPU-only node
    acc = catalog.resolve_node_labels(labels)
    # a MIG slice (mixed strategy: its resource; single strategy: the product label) is
    # its own accelerator, never the whole card
    partition = mig_profile(resource) or mig_profile(labels.get("nvidia.com/gpu.product", "")) or ""
    pool_name = next((n for n, p in declared.items()
                      if _matches((p.get("spec") or {}).get("nodeSelector") or {}, labels)), "")
    if acc is None:
        if pool_name:
            acc_id = str((declared[pool_name].get("spec") or {}).get("acceleratorId", ""))
            acc = catalog.get(acc_id) if acc_id in catalog else None
        if acc is None:
            shown = {k: v for k, v in labels.items() if "gpu" in k or "accelerator" in k}
            return (f"node {name}: {capacity} {resource} but no known accelerator "
                    f"label ({shown or 'none'}); left out")
    if not pool_name:
        key = next((k for k in POOL_LABELS if k in labels), "")
        pool_name = labels[key] if key else (
            f"{acc.id}-mig-{partition}-x{capacity}" if partition else f"{acc.id}-x{capacity}")
        selector = {key: labels[key]} if key else _identifying_label(catalog, labels, acc.id)
    else:
        selector = dict((declared[pool_name].get("spec") or {}).get("nodeSelector") or {})
    return NodeFacts(name, capacity, resource, acc.id, partition, pool_name, selector, _node_ready(node))


def discover_pools(
    nodes: list[dict], pods: list[dict], gpu_node_pools: list[dict],
    catalog: Catalog | None = None,
) -> DiscoveredPools:
    """Group GPU nodes into pools and merge them with GPUNodePool objects.

    A node joins the first GPUNodePool whose ``spec.nodeSelector`` it matches, else the pool
    named by its pool label (``POOL_LABELS``), else a pool per accelerator and GPU count.
    Free GPUs = allocatable minus what bound, unfinished pods request, minus what pending pods
    whose ``nodeSelector`` targets the pool request (the scheduler will put them there; without
    this, models planned in the same moment would all pick the one cheapest pool and leave
    pods Pending). Nodes whose accelerator
    no label identifies are reported in ``unknown`` and left out, never guessed.
    """
    catalog = catalog or load_catalog()
    declared = {(p.get("metadata") or {}).get("name", ""): p for p in gpu_node_pools}
    return pools_from_facts([node_facts(n, declared, catalog) for n in nodes], pods, declared, catalog)


def pools_from_facts(facts: Iterable[NodeFacts | str | None], pods: list[dict],
                     declared: Mapping[str, Mapping[str, Any]], catalog: Catalog) -> DiscoveredPools:
    """The pools of :func:`discover_pools` from its nodes' :func:`node_facts`, in node order."""
    used = _used_by_node(pods)
    unknown: list[str] = []
    groups: dict[str, _Group] = {}
    for fact in facts:
        if fact is None:
            continue
        if isinstance(fact, str):
            unknown.append(fact)
            continue
        name, capacity, partition, pool_name = fact.name, fact.capacity, fact.partition, fact.pool_name
        grp = groups.get(pool_name)
        if grp is None:
            grp = groups[pool_name] = _Group(dict(fact.selector), fact.accelerator_id, partition=partition,
                                             resource=fact.resource)
        if (grp.accelerator_id, grp.partition) != (fact.accelerator_id, partition):
            unknown.append(f"node {name}: accelerator {fact.accelerator_id}{' MIG ' + partition if partition else ''} "
                           f"differs from pool {pool_name}'s {grp.accelerator_id}"
                           f"{' MIG ' + grp.partition if grp.partition else ''}; left out")
            continue
        grp.gpus_per_node = max(grp.gpus_per_node, capacity)
        if fact.ready:
            grp.nodes += 1
            grp.free.append(max(0, capacity - used.get(name, 0)))

    pending = [p for p in pods if _pending(p) and pod_gpus(p)]
    for grp in groups.values():
        for pod in pending:
            if _matches(grp.selector, (pod.get("spec") or {}).get("nodeSelector") or {}):
                _take(grp.free, pod_gpus(pod))

    offers: list[PoolOffer] = []
    for pool_name, obj in declared.items():
        spec = dict(obj.get("spec") or {})
        group: _Group | None = groups.pop(pool_name, None)
        acc_id = str(spec.get("acceleratorId", ""))
        if acc_id not in catalog:
            unknown.append(f"GPUNodePool {pool_name}: unknown acceleratorId {acc_id!r}; left out")
            continue
        if group is None:
            offers.append(_spec_offer(pool_name, spec, "GPUNodePool"))
            continue
        if group.accelerator_id != acc_id:
            unknown.append(f"GPUNodePool {pool_name}: nodes carry {group.accelerator_id}, "
                           f"spec says {acc_id}; node labels win")
            spec["acceleratorId"] = group.accelerator_id
        spec["gpusPerNode"] = spec.get("gpusPerNode") or group.gpus_per_node
        spec["maxNodes"] = max(int(spec.get("maxNodes") or 0), group.nodes)
        spec["migProfile"] = spec.get("migProfile") or group.partition
        offer = _spec_offer(pool_name, spec, "both", group.nodes, sum(group.free), tuple(group.free))
        offers.append(replace(offer, gpu_resource=group.resource or offer.gpu_resource))
    for pool_name, group in groups.items():
        offers.append(PoolOffer(
            name=pool_name, accelerator_id=group.accelerator_id,
            gpus_per_node=group.gpus_per_node, nodes=group.nodes, free_gpus=sum(group.free),
            max_nodes=group.nodes, node_selector=group.selector, source="nodes",
            node_free_gpus=tuple(group.free), partition=group.partition,
            gpu_resource=group.resource,
        ))
    log.debug("discovered %d pools, %d warnings", len(offers), len(unknown))
    return DiscoveredPools(pools=sorted(offers, key=lambda o: o.name), unknown=unknown)
