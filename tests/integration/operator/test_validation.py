"""The API server refuses invalid manifests with a message naming the field (CRD schema + CEL)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from model_cases import INVALID_CASES, InvalidCase, make_model

from deepserve.operator.kube import Kube, KubeError

pytestmark = pytest.mark.integration
IM = "deepserve.io/v1alpha1"


def test_at_least_twenty_kinds_of_mistakes() -> None:
    assert len(INVALID_CASES) >= 20


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_model_is_refused_naming_the_field(case: InvalidCase, kube: Kube, namespace: str) -> None:
    obj = json.loads(json.dumps(case.model))
    obj["metadata"]["namespace"] = namespace
    with pytest.raises(KubeError) as err:
        kube.create(obj)
    assert err.value.status == 422
    assert case.field in err.value.message, err.value.message
    assert kube.list(IM, "InferenceModel", namespace) == []  # nothing half-created


def test_kubectl_shows_the_field_and_the_rule(cluster: Any, kube: Kube, namespace: str) -> None:
    bad = make_model("ab", namespace).versions(("a", 60), ("b", 60)).obj()
    out = cluster.run_kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0
    assert "spec.versions" in out.stderr and "must sum to 100" in out.stderr


def test_defaults_are_applied_by_the_api_server(kube: Kube, namespace: str) -> None:
    created = kube.create(make_model("d", namespace).obj())
    spec = created["spec"]
    assert spec["engine"]["precision"] == "auto" and spec["placement"]["strategy"] == "cost"
    assert spec["scaling"]["minReplicas"] == 1 and spec["runtime"]["exitTimeoutSeconds"] == 30


@pytest.mark.parametrize(("spec", "field"), [
    ({"acceleratorId": "nvidia-l4", "gpusPerNode": 1}, "spec.nodeSelector"),
    ({"nodeSelector": {"pool": "x"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 0}, "spec.gpusPerNode"),
    ({"nodeSelector": {"pool": "x"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1, "currency": "usd"},
     "spec.currency"),
    ({"nodeSelector": {}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1}, "spec.nodeSelector"),
])
def test_invalid_pool_is_refused(spec: dict[str, Any], field: str, kube: Kube) -> None:
    obj = {"apiVersion": IM, "kind": "GPUNodePool", "metadata": {"name": "bad-pool"}, "spec": spec}
    with pytest.raises(KubeError) as err:
        kube.create(obj)
    assert field in err.value.message, err.value.message
