"""The engine pods' NetworkPolicy is applied and kept on the real API server (issue #20.2).

The local control plane has no network plugin, so nothing enforces the policy here: these
tests prove the object the cluster's plugin would enforce, not the dropped packets.
"""

from __future__ import annotations

from typing import Any

import pytest
from model_cases import make_model
from ops_helpers import IM, condition, wait_for

from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NP = "networking.k8s.io/v1"


def test_each_model_gets_a_policy_admitting_only_gateway_operator_and_scrapers(
        kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator("--standalone", "--release-namespace", "deepserve-system",
                   "--metrics-from", "monitoring/app.kubernetes.io/name=prometheus")
    kube.create(make_model("guarded", namespace).obj())
    np = wait_for(lambda: kube.get(NP, "NetworkPolicy", "guarded-engine", namespace), "the NetworkPolicy", 60)
    assert np["metadata"]["ownerReferences"][0]["kind"] == "InferenceModel"
    assert np["spec"]["podSelector"] == {"matchLabels": {"deepserve.io/model": "guarded"}}
    peers = {(r["from"][0].get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name"),
              tuple(sorted(r["from"][0]["podSelector"]["matchLabels"].items())),
              tuple(sorted(p["port"] for p in r.get("ports", [])))) for r in np["spec"]["ingress"]}
    assert peers == {
        ("deepserve-system", (("app.kubernetes.io/component", "gateway"),), (8000, 8001, 9000)),
        ("deepserve-system", (("app.kubernetes.io/component", "operator"),), (8000, 8001, 8002, 9000)),
        ("monitoring", (("app.kubernetes.io/name", "prometheus"),), (8002,)),
        (None, (("deepserve.io/model", "guarded"),), ()),
    }
    pods = wait_for(lambda: kube.list("v1", "Pod", namespace, label_selector="deepserve.io/model=guarded"),
                    "the model's pods", 60)
    assert all(p["metadata"]["labels"]["deepserve.io/model"] == "guarded" for p in pods)  # selected by it
    wait_for(lambda: condition(kube.get(IM, "InferenceModel", "guarded", namespace), "Ready").get("status")
             == "True", "the model Ready behind its policy", 90)
    kube.delete(NP, "NetworkPolicy", "guarded-engine", namespace)
    wait_for(lambda: kube.get(NP, "NetworkPolicy", "guarded-engine", namespace), "the deleted policy recreated", 60)


def test_no_policy_when_turned_off(kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator("--standalone", "--engine-network-policy", "off")
    kube.create(make_model("open", namespace).obj())
    wait_for(lambda: kube.list("apps/v1", "Deployment", namespace), "the Deployment", 60)
    assert kube.list(NP, "NetworkPolicy", namespace) == []
