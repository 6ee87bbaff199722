"""The Tenant kind: generated like the other CRDs, every field documented, the typed view."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from deepserve.operator.api.crds import all_crds, tenant_crd
from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.tenancy.tenants import build_tenant, tenant_from_object

pytestmark = pytest.mark.unit


def _walk(schema: dict[str, Any], path: str):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_tenant_is_a_cluster_scoped_kind_in_the_generated_set() -> None:
    crd = tenant_crd()
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["metadata"]["name"] == "tenants.deepserve.io"
    assert any(c["metadata"]["name"] == "tenants.deepserve.io" for c in all_crds())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    undocumented = [p for p, n in _walk(root["properties"]["spec"], "spec") if "description" not in n]
    assert undocumented == []


def test_view_reads_the_plan() -> None:
    view = tenant_from_object(build_tenant("acme", {"plan": {
        "models": {"namespaces": ["team-a"], "labels": {"tier": "gold"}},
        "requestsPerMinute": 60, "tokensPerMinute": 1000, "maxConcurrentRequests": 4,
        "monthlySpendCap": {"amount": "19.99", "currency": "EUR"}}}))
    plan = view.plan
    assert view.name == "acme" and not view.suspended and view.keys_allowed == 2
    assert plan.requests_per_minute == 60 and plan.tokens_per_minute == 1000
    assert plan.max_concurrent_requests == 4
    assert plan.monthly_spend_cap == Decimal("19.99") and plan.currency == "EUR"
    assert plan.models.allows("team-a", "m", {"tier": "gold"})
    assert not plan.models.allows("team-a", "m", {})
    assert not plan.models.allows("team-b", "m", {"tier": "gold"})


def test_empty_plan_allows_nothing_and_is_unlimited() -> None:
    plan = tenant_from_object(build_tenant("t")).plan
    assert not plan.models.allows("any", "model", {})
    assert plan.requests_per_minute is None and plan.monthly_spend_cap is None


@pytest.mark.parametrize(("spec", "field"), [
    ({"plan": {"requestsPerMinute": 0}}, "spec.plan.requestsPerMinute"),
    ({"plan": {"tokensPerMinute": "many"}}, "spec.plan.tokensPerMinute"),
    ({"plan": {"monthlySpendCap": {"amount": "-1"}}}, "spec.plan.monthlySpendCap.amount"),
    ({"plan": {"monthlySpendCap": {"amount": "1e308"}}}, "spec.plan.monthlySpendCap.amount"),
    ({"plan": {"monthlySpendCap": {"amount": "5", "currency": "usd"}}},
     "spec.plan.monthlySpendCap.currency"),
    ({"plan": {"models": {"names": ["no-namespace"]}}}, "spec.plan.models.names[0]"),
    ({"plan": {"models": {"allowAll": True, "namespaces": ["a"]}}}, "spec.plan.models.allowAll"),
    ({"plan": {"models": {"namespaces": ["a", "a"]}}}, "spec.plan.models.namespaces"),
    ({"keysAllowed": 3}, "spec.keysAllowed"),
    ({"plan": {"rpm": 5}}, "spec.plan.rpm"),
])
def test_view_refuses_bad_values_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        tenant_from_object(build_tenant("t", spec))
    assert err.value.field == field


def test_inference_model_aliases_in_the_typed_view() -> None:
    spec = InferenceModelSpec.from_dict({"source": {"uri": "builtin://tiny-llama"},
                                         "aliases": ["tiny-chat", "tiny.v1"]})
    assert spec.aliases == ("tiny-chat", "tiny.v1")
    with pytest.raises(SpecError) as err:
        InferenceModelSpec.from_dict({"source": {"uri": "builtin://tiny-llama"},
                                      "aliases": ["a", "a"]})
    assert err.value.field == "spec.aliases"
    with pytest.raises(SpecError) as err:
        InferenceModelSpec.from_dict({"source": {"uri": "builtin://tiny-llama"},
                                      "aliases": ["team/model"]})
    assert err.value.field == "spec.aliases[0]"
