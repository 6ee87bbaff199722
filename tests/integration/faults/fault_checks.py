"""Ground truths of the fault suite: what a model's children are, who owns them, and that a
fault created none of them twice."""

from __future__ import annotations

from typing import Any

import pytest
from ops_helpers import IM, condition, wait_for

from deepserve.operator.kube import Kube

CHILD_KINDS = [("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"),
               ("policy/v1", "PodDisruptionBudget"), ("networking.k8s.io/v1", "NetworkPolicy")]


def children(kube: Kube, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the operator labels as a model's child in ``namespace``, by (kind, name)."""
    out = {}
    for api_version, kind in CHILD_KINDS:
        for obj in kube.list(api_version, kind, namespace, label_selector="deepserve.io/model"):
            out[(kind, obj["metadata"]["name"])] = obj
    return out


def uids(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {k: o["metadata"]["uid"] for k, o in objs.items()}


def must_get(kube: Kube, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    """The object; fails the test naming it when it does not exist."""
    obj = kube.get(api_version, kind, name, namespace)
    assert obj is not None, f"{kind} {namespace}/{name} does not exist"
    return obj


def ready(kube: Kube, namespace: str, name: str, generation: int = 1, timeout: float = 120) -> dict[str, Any]:
    """Wait until the model is Ready at ``generation``; returns it. On a timeout the failure shows
    the model's last status and its Deployment's and pods' states (what was stuck)."""
    seen: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        obj = kube.get(IM, "InferenceModel", name, namespace)
        st = (obj or {}).get("status") or {}
        seen["status"] = {"observedGeneration": st.get("observedGeneration"),
                          "conditions": [(c.get("type"), c.get("status"), c.get("reason"))
                                         for c in st.get("conditions") or []]}
        ok = st.get("observedGeneration") == generation and condition(obj, "Ready").get("status") == "True"
        return obj if ok else None

    try:
        return wait_for(check, f"{name} Ready at generation {generation}", timeout)
    except pytest.fail.Exception as e:
        raise AssertionError(f"{e}\n  last status: {seen.get('status')}\n  children: {_stuck(kube, namespace, name)}") from None


def _stuck(kube: Kube, namespace: str, name: str) -> list[Any]:
    """The model's Deployments (replicas, ready, generation observed) and pods (node, phase)."""
    try:
        out: list[Any] = []
        for d in kube.list("apps/v1", "Deployment", namespace, label_selector=f"deepserve.io/model={name}"):
            st = d.get("status") or {}
            out.append(("Deployment", d["metadata"]["name"], d["metadata"].get("generation"),
                        st.get("observedGeneration"), st.get("replicas"), st.get("readyReplicas")))
        for p in kube.list("v1", "Pod", namespace, label_selector=f"deepserve.io/model={name}"):
            out.append(("Pod", p["metadata"]["name"], p["spec"].get("nodeName"), (p.get("status") or {}).get("phase")))
        return out
    except Exception as e:  # the diagnosis must not hide the failure
        return [repr(e)]


def assert_one_owned_set_per_model(kube: Kube, namespace: str, names: list[str]) -> None:
    """Each model has the same kinds of children, each owned by the live model; nothing else
    (no orphan, no duplicate), one ReplicaSet per Deployment (no template churn)."""
    models = {m["metadata"]["name"]: m["metadata"]["uid"] for m in kube.list(IM, "InferenceModel", namespace)}
    assert sorted(models) == sorted(names)
    kids = children(kube, namespace)
    per_model: dict[str, set[tuple[str, str]]] = {n: set() for n in names}
    for (kind, name), obj in kids.items():
        owner = obj["metadata"]["labels"]["deepserve.io/model"]
        refs = obj["metadata"].get("ownerReferences") or []
        assert [r["uid"] for r in refs if r.get("controller")] == [models.get(owner)], (kind, name, refs)
        per_model[owner].add((kind, name.replace(owner, "<m>", 1)))
    shapes = {frozenset(s) for s in per_model.values()}
    assert len(shapes) == 1 and ("Deployment", "<m>-main") in next(iter(shapes)), per_model
    deployments = [k for k in kids if k[0] == "Deployment"]
    replica_sets = kube.list("apps/v1", "ReplicaSet", namespace)
    assert len(replica_sets) == len(deployments) == len(names), [r["metadata"]["name"] for r in replica_sets]


