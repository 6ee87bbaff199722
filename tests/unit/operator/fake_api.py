"""An in-memory stand-in for the API server's write path (server-side apply semantics)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from deepserve.operator.controller.observed import child_ref, deployment_state
from deepserve.operator.controller.reconcile import Observed
from deepserve.operator.kube import KubeError

_GENERATION_KINDS = {"Deployment", "PodDisruptionBudget", "HTTPRoute"}


class FakeApi:
    """Stores objects; apply is a no-op when content is unchanged; counts every write."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.status_patches: list[dict[str, Any]] = []
        self.writes = 0
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)
        self.refuse: dict[str, KubeError] = {}  # kind -> the error the API server answers

    @staticmethod
    def _content(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if k not in ("metadata", "status")}

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        if obj["kind"] in self.refuse:
            raise self.refuse[obj["kind"]]
        key = (obj["kind"], obj["metadata"]["name"])
        cur = self.objects.get(key)
        if cur is not None and self._content(cur) == self._content(obj):
            return copy.deepcopy(cur)
        new = copy.deepcopy(obj)
        md = new["metadata"]
        md["uid"] = cur["metadata"]["uid"] if cur else f"uid-{next(self._uid)}"
        md["resourceVersion"] = str(next(self._rv))
        if obj["kind"] in _GENERATION_KINDS:
            md["generation"] = (cur["metadata"]["generation"] + 1) if cur else 1
        self.objects[key] = new
        return copy.deepcopy(new)

    def hand_edit(self, kind: str, name: str, path: list[str], value: Any) -> None:
        """What `kubectl edit` does: change content, bump resourceVersion and generation."""
        obj = self.objects[(kind, name)]
        node = obj
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        if kind in _GENERATION_KINDS:
            obj["metadata"]["generation"] += 1

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None,
               uid: str | None = None) -> bool:
        self.writes += 1
        return self.objects.pop((kind, name), None) is not None

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str | None,
                     status: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        self.status_patches.append(copy.deepcopy(status))
        return {}

    def observed(self, model: dict[str, Any], pools: list[Any], ready: bool = False) -> Observed:
        """What the operator's indexes would hold now (Deployments optionally all Ready)."""
        children = {}
        deployments = {}
        for (kind, _), obj in self.objects.items():
            children[(kind, obj["metadata"]["name"])] = child_ref(obj)
            if kind == "Deployment":
                body = copy.deepcopy(obj)
                n = body["spec"]["replicas"] if ready else 0
                body["status"] = {"observedGeneration": body["metadata"]["generation"], "readyReplicas": n,
                                  "updatedReplicas": n, "availableReplicas": n}
                deployments[body["metadata"]["labels"]["deepserve.io/version"]] = deployment_state(body)
        return Observed(model=model, children=children, deployments=deployments, pools=pools)
