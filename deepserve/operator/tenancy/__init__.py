"""Tenants and their API keys: the types the gateway and the key store share.

The gateway (``deepserve.operator.gateway``) authenticates every request with an
:class:`Authenticator`; the key store (this package) implements it from ``Tenant``
objects and key Secrets, so the gateway never sees a key's hash or a Secret.

A presented key is ``ds-<key_id>-<secret>``: ``key_id`` (public, 12 lowercase base32
characters) finds the stored record, the secret is checked against a salted hash with a
constant-time comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True)
class ModelSelector:
    """Which InferenceModels a plan may use; empty lists mean "no restriction" on that axis.

    A model is allowed when it matches every non-empty axis: its namespace is in
    ``namespaces``, its ``<namespace>/<name>`` is in ``names``, and its labels contain
    every pair of ``labels``. A plan with all three empty allows nothing
    (``allow_all=True`` says "everything" explicitly).
    """

    namespaces: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    allow_all: bool = False

    def allows(self, namespace: str, name: str, labels: dict[str, str]) -> bool:
        """True when the model ``namespace/name`` with ``labels`` is in this selector."""
        if self.allow_all:
            return True
        if not (self.namespaces or self.names or self.labels):
            return False
        if self.namespaces and namespace not in self.namespaces:
            return False
        if self.names and f"{namespace}/{name}" not in self.names:
            return False
        return all(labels.get(k) == v for k, v in self.labels)


@dataclass(frozen=True)
class TenantPlan:
    """A tenant's limits. ``None`` means unlimited on that axis."""

    models: ModelSelector = field(default_factory=ModelSelector)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None  # prompt + generated
    max_concurrent_requests: int | None = None
    monthly_spend_cap: Decimal | None = None  # in ``currency``
    currency: str = "USD"


@dataclass(frozen=True)
class Principal:
    """Who a valid key belongs to: the tenant (the billed party) and its plan."""

    tenant: str
    key_id: str
    plan: TenantPlan


class Authenticator(Protocol):
    """Checks a presented API key; returns None for a missing, wrong, revoked or expired key."""

    def authenticate(self, presented_key: str) -> Principal | None: ...


class SpendSource(Protocol):
    """Month-to-date spend of a tenant in its plan's currency (for the spend cap)."""

    def month_to_date(self, tenant: str) -> Decimal: ...
