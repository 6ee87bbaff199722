"""Turn kopf bodies and index contents into plain data for the pure reconcile."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from deepserve.operator.builders.context import LABEL_MODEL
from deepserve.operator.builders.deployment import GPU_RESOURCE
from deepserve.operator.placement.gpus import container_gpus


def plain(obj: Any) -> Any:
    """A deep copy of a kopf Body (mapping views) as plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def model_snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the controller keeps of an InferenceModel."""
    md = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {"name": md.get("name"), "namespace": md.get("namespace"), "uid": md.get("uid"),
                     "generation": md.get("generation", 1)},
        "spec": plain(body.get("spec", {})), "status": plain(body.get("status", {}) or {}),
    }


def node_snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """What placement needs of a Node."""
    md, spec, st = body.get("metadata", {}), body.get("spec", {}), body.get("status", {}) or {}
    ready = [c for c in st.get("conditions", []) or [] if c.get("type") == "Ready"]
    return {
        "metadata": {"name": md.get("name"), "labels": plain(md.get("labels", {}) or {})},
        "spec": {"taints": plain(spec.get("taints", []) or []), "unschedulable": spec.get("unschedulable", False)},
        "status": {"capacity": plain(st.get("capacity", {}) or {}),
                   "allocatable": plain(st.get("allocatable", {}) or {}),
                   "conditions": plain(ready)},
    }


def gpu_pod_snapshot(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """A minimal pod (node, phase, GPU requests) if it holds GPUs, else None."""
    spec, st = body.get("spec", {}), body.get("status", {}) or {}
    if st.get("phase") in ("Succeeded", "Failed"):
        return None
    containers = []
    for c in spec.get("containers", []) or []:
        req = container_gpus(c)
        if req:
            containers.append({"resources": {"requests": {GPU_RESOURCE: str(req)}, "limits": {GPU_RESOURCE: str(req)}}})
    if not containers:
        return None
    md = body.get("metadata", {})
    labels = {k: v for k, v in (md.get("labels") or {}).items() if k == LABEL_MODEL}
    return {"metadata": {"name": md.get("name"), "namespace": md.get("namespace"), "labels": labels},
            "spec": {"nodeName": spec.get("nodeName", ""), "containers": containers,
                     "nodeSelector": dict(spec.get("nodeSelector") or {})},
            "status": {"phase": st.get("phase", "Pending")}}


def flatten(index: Mapping[Any, Iterable[Any]] | None) -> list[Any]:
    """All values of a kopf index."""
    if not index:
        return []
    return [v for key in list(index) for v in index.get(key, [])]


class TtlCache:
    """Recompute a value at most every ``ttl`` seconds (pool discovery is shared by all models)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._at = -1e18
        self._value: Any = None

    def get(self, compute: Any) -> Any:
        """The cached value, recomputed with ``compute()`` when stale."""
        now = time.monotonic()
        if now - self._at > self.ttl:
            self._value = compute()
            self._at = now
        return self._value

    def clear(self) -> None:
        """Force a recompute on the next get."""
        self._at = -1e18
