"""Health tells the truth (issue #20.3/4): conditions and Warning Events on the real API server."""

from __future__ import annotations

from typing import Any

import pytest
from model_cases import make_model
from ops_helpers import IM, condition, wait_for

from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def warning_events(kube: Kube, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.list("v1", "Event", ns)
            if e.get("type") == "Warning" and e.get("reason") == reason
            and (e.get("involvedObject") or {}).get("name") == name]


def test_unknown_pool_name_is_scheduled_false_naming_it(kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator()
    kube.create(make_model("typo", namespace).set("placement.allowedPools", ["l4-typo"]).obj())

    def unknown() -> dict[str, Any] | None:
        c = condition(kube.get(IM, "InferenceModel", "typo", namespace), "Scheduled")
        return c if c.get("reason") == "UnknownPool" else None

    cond = wait_for(unknown, "Scheduled=False UnknownPool", 60)
    assert cond["status"] == "False"
    assert "spec.placement.allowedPools" in cond["message"] and "l4-typo" in cond["message"]
    events = wait_for(lambda: warning_events(kube, namespace, "typo", "UnknownPool"), "a Warning Event", 30)
    assert "l4-typo" in events[0]["message"]
    assert kube.list("apps/v1", "Deployment", namespace) == []
