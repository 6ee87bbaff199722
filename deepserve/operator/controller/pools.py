"""GPUNodePool status: observed capacity of the nodes a pool selects (pure)."""

from __future__ import annotations

from typing import Any

from deepserve.engine.hardware import load_catalog
from deepserve.operator.placement.gpus import node_gpus, pod_gpus


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pool_status(pool: dict[str, Any], nodes: list[dict[str, Any]], gpu_pods: list[dict[str, Any]],
                offers: list[Any], now: str) -> dict[str, Any]:
    """Status of one GPUNodePool: nodes, ready nodes, total and free GPUs, and a Ready condition."""
    spec = pool.get("spec", {})
    selector = spec.get("nodeSelector", {}) or {}
    mine = [n for n in nodes if _matches(n["metadata"].get("labels", {}) or {}, selector)]
    names = {n["metadata"]["name"] for n in mine}
    ready = sum(1 for n in mine if any(c.get("status") == "True" for c in n["status"].get("conditions", [])))
    total = sum(node_gpus(n) for n in mine)
    used = sum(pod_gpus(p) for p in gpu_pods if (p.get("spec") or {}).get("nodeName") in names)
    accel = spec.get("acceleratorId", "")
    try:
        load_catalog().get(accel)
        known = True
    except KeyError:
        known = False
    offered = any(getattr(o, "name", None) == pool["metadata"]["name"] for o in offers)
    if not known:
        cond = ("False", "UnknownAccelerator", f"acceleratorId {accel!r} is not in the knowledge base")
    elif not mine and not spec.get("maxNodes"):
        cond = ("False", "NoNodes", f"no node matches nodeSelector {selector} and maxNodes is 0")
    else:
        cond = ("True", "Offered" if offered else "Available", f"{len(mine)} node(s), {total - used} free GPU(s)")
    previous = {c.get("type"): c for c in (pool.get("status") or {}).get("conditions", [])}
    prev = previous.get("Ready", {})
    since = prev.get("lastTransitionTime", now) if prev.get("status") == cond[0] else now
    generation = int(pool["metadata"].get("generation", 1))
    return {
        "observedGeneration": generation, "nodes": len(mine), "readyNodes": ready, "totalGpus": total,
        "freeGpus": max(0, total - used),
        "conditions": [{"type": "Ready", "status": cond[0], "reason": cond[1], "message": cond[2],
                        "observedGeneration": generation, "lastTransitionTime": since}],
    }
