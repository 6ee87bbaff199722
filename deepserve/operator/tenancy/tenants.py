"""Typed view of a Tenant object: its plan as :class:`TenantPlan`, validated like the CRD."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from deepserve.operator.api import tenant_schema as schema
from deepserve.operator.api.schema_check import SpecError, conform
from deepserve.operator.tenancy import ModelSelector, TenantPlan

API_VERSION = "deepserve.io/v1alpha1"
KIND = "Tenant"


@dataclass(frozen=True)
class TenantView:
    """A Tenant: its name (the billed identity), plan, suspension and how many live keys it may hold."""

    name: str
    plan: TenantPlan
    suspended: bool
    keys_allowed: int


def tenant_from_object(obj: dict[str, Any]) -> TenantView:
    """Default and validate a Tenant object; raise SpecError naming the first bad field."""
    name = (obj.get("metadata") or {}).get("name") or ""
    if not name:
        raise SpecError("metadata.name", "required value")
    spec = conform(schema.SPEC, obj.get("spec") or {}, "spec")
    p = spec["plan"]
    m = p["models"]
    if m["allowAll"] and (m.get("namespaces") or m.get("names") or m.get("labels")):
        raise SpecError("spec.plan.models.allowAll", "allowAll excludes namespaces, names and labels")
    models = ModelSelector(
        namespaces=tuple(m.get("namespaces", [])),
        names=tuple(m.get("names", [])),
        labels=tuple(sorted((m.get("labels") or {}).items())),
        allow_all=m["allowAll"],
    )
    cap = p.get("monthlySpendCap")
    plan = TenantPlan(
        models=models,
        requests_per_minute=p.get("requestsPerMinute"),
        tokens_per_minute=p.get("tokensPerMinute"),
        max_concurrent_requests=p.get("maxConcurrentRequests"),
        monthly_spend_cap=Decimal(cap["amount"]) if cap else None,
        currency=cap["currency"] if cap else "USD",
    )
    return TenantView(name, plan, spec["suspended"], spec["keysAllowed"])


def build_tenant(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Tenant manifest named ``name`` with ``spec`` (empty: a plan that allows nothing)."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec or {}}
