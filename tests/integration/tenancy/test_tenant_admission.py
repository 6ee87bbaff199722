"""The real API server refuses bad Tenants and bad InferenceModel aliases, naming the field."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from deepserve.operator.kube import Kube, KubeError
from deepserve.operator.tenancy.tenants import API_VERSION, build_tenant, tenant_from_object

pytestmark = pytest.mark.integration


def _name() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(("spec", "field"), [
    ({"plan": {"requestsPerMinute": 0}}, "spec.plan.requestsPerMinute"),
    ({"plan": {"maxConcurrentRequests": -3}}, "spec.plan.maxConcurrentRequests"),
    ({"plan": {"monthlySpendCap": {"amount": "1e308"}}}, "spec.plan.monthlySpendCap.amount"),
    ({"plan": {"monthlySpendCap": {"amount": "10", "currency": "dollars"}}},
     "spec.plan.monthlySpendCap.currency"),
    ({"plan": {"monthlySpendCap": {"currency": "USD"}}}, "spec.plan.monthlySpendCap.amount"),
    ({"plan": {"models": {"names": ["missing-namespace"]}}}, "spec.plan.models.names[0]"),
    ({"plan": {"models": {"allowAll": True, "names": ["a/b"]}}}, "spec.plan.models.allowAll"),
    ({"keysAllowed": 5}, "spec.keysAllowed"),
])
def test_bad_tenant_is_refused_naming_the_field(spec: dict[str, Any], field: str,
                                                tenancy_kube: Kube) -> None:
    name = _name()
    with pytest.raises(KubeError) as err:
        tenancy_kube.create(build_tenant(name, spec))
    assert err.value.status == 422
    assert field in err.value.message, err.value.message
    assert tenancy_kube.get(API_VERSION, "Tenant", name) is None  # nothing half-created


def test_bad_tenant_name_is_refused(tenancy_kube: Kube) -> None:
    with pytest.raises(KubeError) as err:
        tenancy_kube.create(build_tenant("Acme.Corp"))
    assert "metadata.name" in err.value.message


def test_valid_tenant_gets_defaults_and_reads_back(tenancy_kube: Kube) -> None:
    name = _name()
    created = tenancy_kube.create(build_tenant(name, {"plan": {
        "models": {"namespaces": ["team-a"]}, "requestsPerMinute": 30,
        "monthlySpendCap": {"amount": "12.50"}}}))
    try:
        assert created["spec"]["suspended"] is False and created["spec"]["keysAllowed"] == 2
        view = tenant_from_object(created)
        assert view.plan.requests_per_minute == 30 and str(view.plan.monthly_spend_cap) == "12.50"
        assert view.plan.currency == "USD"
    finally:
        tenancy_kube.delete(API_VERSION, "Tenant", name)


def test_duplicate_alias_is_refused(tenancy_kube: Kube, namespace: str) -> None:
    model = {"apiVersion": API_VERSION, "kind": "InferenceModel",
             "metadata": {"name": "aliased", "namespace": namespace},
             "spec": {"source": {"uri": "builtin://tiny-llama"}, "aliases": ["chat", "chat"]}}
    with pytest.raises(KubeError) as err:
        tenancy_kube.create(model)
    assert "spec.aliases" in err.value.message, err.value.message
    model["spec"]["aliases"] = ["chat", "chat.v1"]
    created = tenancy_kube.create(model)
    assert created["spec"]["aliases"] == ["chat", "chat.v1"]
