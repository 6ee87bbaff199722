"""Two operator replicas: only the highest priority acts; the other takes over when it stops."""

from __future__ import annotations

from typing import Any

import pytest
from model_cases import make_model
from ops_helpers import IM, condition, wait_for

from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_lower_priority_replica_pauses_then_takes_over(kube: Kube, namespace: str, start_operator: Any) -> None:
    low = start_operator("--peering", "deepserve", "--priority", "10")
    high = start_operator("--peering", "deepserve", "--priority", "20")
    # kopf pauses the lower replica's watch streams as soon as it sees the higher peer
    wait_for(lambda: "starting (" in low.log() and "starting (" in high.log(), "both replicas started", 30)
    kube.create(make_model("p", namespace).obj())
    wait_for(lambda: condition(kube.get(IM, "InferenceModel", "p", namespace), "Ready").get("status") == "True",
             "model Ready via the high-priority replica", 90)
    assert ": applied " in high.log() and ": applied " not in low.log()  # only the leader wrote
    high.stop()  # a clean exit leaves the peering; the other replica resumes
    obj = kube.get(IM, "InferenceModel", "p", namespace)
    obj["spec"]["scaling"] = {"minReplicas": 2, "maxReplicas": 2}
    kube.request("PUT", f"/apis/{IM}/namespaces/{namespace}/inferencemodels/p", body=obj)
    wait_for(lambda: kube.get("apps/v1", "Deployment", "p-main", namespace)["spec"]["replicas"] == 2,
             "the remaining replica acting on an update", 60)
