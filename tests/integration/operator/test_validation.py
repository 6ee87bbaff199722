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
    # issue #20.4: absurd prices, selector keys/values that are not labels, the shared toleration rule
    ({"nodeSelector": {"pool": "x"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1, "pricePerGpuHour": 1e308},
     "spec.pricePerGpuHour"),
    ({"nodeSelector": {"not a key": "x"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1}, "spec.nodeSelector"),
    ({"nodeSelector": {"Example.COM/pool": "x"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1},
     "spec.nodeSelector"),
    ({"nodeSelector": {"pool": "not ok!"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1}, "spec.nodeSelector.pool"),
    ({"nodeSelector": {"pool": "x"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1,
      "tolerations": [{"operator": "Equal", "value": "x"}]}, "spec.tolerations[0].key"),
    ({"nodeSelector": {"pool": "x"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1,
      "tolerations": [{"key": "a/b/c", "operator": "Exists"}]}, "spec.tolerations[0].key"),
])
def test_invalid_pool_is_refused(spec: dict[str, Any], field: str, kube: Kube) -> None:
    obj = {"apiVersion": IM, "kind": "GPUNodePool", "metadata": {"name": "bad-pool"}, "spec": spec}
    with pytest.raises(KubeError) as err:
        kube.create(obj)
    assert err.value.status == 422
    assert field in err.value.message, err.value.message
    assert kube.get(IM, "GPUNodePool", "bad-pool") is None


def test_pool_name_longer_than_a_label_value_is_refused(kube: Kube) -> None:
    """Found by the dry-run property test: a 64-character pool name made every Deployment invalid."""
    obj = {"apiVersion": IM, "kind": "GPUNodePool", "metadata": {"name": "p" * 64},
           "spec": {"nodeSelector": {"pool": "x"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1}}
    with pytest.raises(KubeError) as err:
        kube.create(obj)
    assert err.value.status == 422 and "metadata.name" in err.value.message


def test_label_shaped_selectors_and_tolerations_are_admitted(kube: Kube) -> None:
    """The new rules refuse only what the pod API refuses: real node labels and taints pass."""
    spec = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": ""},
            "acceleratorId": "nvidia-h100-sxm5-80gb", "gpusPerNode": 8, "pricePerGpuHour": 1e6,
            "tolerations": [{"key": "example.com/dedicated", "value": "ml_team-1.a", "effect": "NoSchedule"},
                            {"operator": "Exists", "effect": "NoExecute"}]}
    obj = {"apiVersion": IM, "kind": "GPUNodePool", "metadata": {"name": "good-pool"}, "spec": spec}
    try:
        assert kube.create(obj)["spec"]["nodeSelector"] == spec["nodeSelector"]
    finally:
        kube.delete(IM, "GPUNodePool", "good-pool")


@pytest.mark.parametrize("uri", ["pvc://models/llama-3.1/8b-instruct", "pvc://models", "hf://meta-llama/Llama-3.1-8B",
                                 "hf://org/model@refs/pr/1",
                                 "s3://my-bucket/org/model=v1+fp8/", "builtin://tiny-deepseek-v3"])
def test_every_supported_source_form_is_admitted(uri: str, kube: Kube, namespace: str) -> None:
    assert kube.create(make_model("src", namespace).source(uri).obj())["spec"]["source"]["uri"] == uri


def test_refusals_say_what_is_allowed(kube: Kube, namespace: str) -> None:
    with pytest.raises(KubeError) as err:
        kube.create(make_model("b", namespace).source("builtin://tiny-gpt9").obj())
    assert "builtin://tiny-llama" in err.value.message  # the names the engine knows
    with pytest.raises(KubeError) as err:
        kube.create(make_model("c", namespace).set("resources.cpu", "-1").obj())
    assert "spec.resources.cpu" in err.value.message and "greater than 0" in err.value.message
