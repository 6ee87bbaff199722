"""The scale subresource on a real API server: autoscaler writes, manual edits, scale from zero."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deepserve.operator.autoscaler.io import read_scale, scale_from_zero, write_scale
from deepserve.operator.autoscaler.loop import AutoscalerOptions, ModelAutoscaler
from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration]
IM = "deepserve.io/v1alpha1"


def make(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": IM, "kind": "InferenceModel", "metadata": {"name": name, "namespace": ns},
            "spec": {"source": {"uri": "builtin://tiny-llama"},
                     "scaling": {"minReplicas": 0, "maxReplicas": 4, "scaleToZero": {"enabled": True}}}}


def replicas(kube: Kube, ns: str, name: str) -> int | None:
    obj = kube.get(IM, "InferenceModel", name, ns) or {}
    return obj.get("spec", {}).get("scaling", {}).get("replicas")


def test_autoscaler_owns_until_kubectl_scale_then_defers(cluster: Any, scale_kube: Kube, namespace: str) -> None:
    kube = scale_kube
    cluster.run_kubectl("apply", "-f", "-", input=json.dumps(make("chat", namespace)))
    write_scale(kube, namespace, "chat", 0)
    assert scale_from_zero(kube, namespace, "chat") is True  # the activator's ask
    assert replicas(kube, namespace, "chat") == 1
    assert scale_from_zero(kube, namespace, "chat") is False  # already up: no write
    assert read_scale(kube, namespace, "chat")["spec"]["replicas"] == 1

    auto = ModelAutoscaler(kube, namespace, "chat", AutoscalerOptions(manual_hold_s=600))
    result = auto.tick()
    assert result is not None and result.owner.owner == "deepserve", result.owner

    cluster.run_kubectl("scale", "inferencemodel/chat", "--replicas=3", "-n", namespace)
    result = auto.tick()
    obj = kube.get(IM, "InferenceModel", "chat", namespace) or {}
    managed = [(m.get("manager"), m.get("operation"), m.get("subresource"), m.get("time"))
               for m in obj["metadata"]["managedFields"]]
    assert result is not None and result.owner.owner == "external", (result.owner, managed)
    assert "manual edit" in result.owner.reason and result.written is None
    assert replicas(kube, namespace, "chat") == 3


def test_hpa_targeting_the_model_owns_it(cluster: Any, scale_kube: Kube, namespace: str) -> None:
    kube = scale_kube
    cluster.run_kubectl("apply", "-f", "-", input=json.dumps(make("chat", namespace)))
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "keda-hpa-chat", "namespace": namespace},
           "spec": {"scaleTargetRef": {"apiVersion": IM, "kind": "InferenceModel", "name": "chat"},
                    "minReplicas": 1, "maxReplicas": 4,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                                                  "target": {"type": "Utilization",
                                                                             "averageUtilization": 50}}}]}}
    kube.create(hpa)
    result = ModelAutoscaler(kube, namespace, "chat").tick()
    assert result is not None and result.owner.owner == "external" and "KEDA" in result.owner.reason
