"""Prices for pay-per-use billing: per 1M prompt tokens, per 1M generated tokens, per
request, and per GPU-hour by pool, configurable per model and per account.

A :class:`PriceSheet` has one currency (ISO 4217). Each price component resolves
independently, most specific first: account+model override, model, account, default, 0.
Models are keyed ``namespace/model`` (or bare ``model`` for every namespace). Amounts are
``Decimal`` so that costs are exact and exports are byte-for-byte reproducible.

Dict form (what ``--prices`` files and ``PriceSheet.from_dict`` read)::

    currency: USD
    default:   {promptPerMillion: "0.50", generatedPerMillion: "1.50", perRequest: "0"}
    models:    {"prod/chat": {generatedPerMillion: "2.00"}}
    accounts:  {"acme": {perRequest: "0.0001"}}
    overrides: [{account: acme, model: prod/chat, promptPerMillion: "0.40"}]
    gpuHour:   {h100-pool: "2.49"}
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_COMPONENTS = ("promptPerMillion", "generatedPerMillion", "perRequest")


class PriceError(ValueError):
    """A price sheet is invalid; the message starts with the offending field path."""


def _amount(path: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise PriceError(f"{path}: must be a decimal number, got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PriceError(f"{path}: not a decimal number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise PriceError(f"{path}: must be finite and not negative, got {value!r}")
    return amount


@dataclasses.dataclass(frozen=True)
class Price:
    """Optional price components; ``None`` means "not set here, look further"."""

    prompt_per_million: Decimal | None = None
    generated_per_million: Decimal | None = None
    per_request: Decimal | None = None

    @classmethod
    def from_dict(cls, path: str, data: Any) -> Price:
        """Parse ``{promptPerMillion, generatedPerMillion, perRequest}``; raises PriceError."""
        if not isinstance(data, Mapping):
            raise PriceError(f"{path}: must be a mapping")
        unknown = sorted(set(data) - set(_COMPONENTS) - {"account", "model"})
        if unknown:
            raise PriceError(f"{path}.{unknown[0]}: unknown price component")
        values = [
            _amount(f"{path}.{key}", data[key]) if data.get(key) is not None else None
            for key in _COMPONENTS
        ]
        return cls(*values)

    def to_dict(self) -> dict[str, str]:
        """Return the canonical dict form (only components that are set)."""
        values = (self.prompt_per_million, self.generated_per_million, self.per_request)
        return {k: str(v) for k, v in zip(_COMPONENTS, values, strict=True) if v is not None}


@dataclasses.dataclass(frozen=True)
class ResolvedPrice:
    """Fully resolved unit prices for one account and model, in ``currency``."""

    currency: str
    prompt_per_million: Decimal
    generated_per_million: Decimal
    per_request: Decimal


@dataclasses.dataclass(frozen=True)
class PriceSheet:
    """All prices in one currency. Build with :meth:`from_dict`; resolve with :meth:`resolve`."""

    currency: str = "USD"
    default: Price = Price()
    models: Mapping[str, Price] = dataclasses.field(default_factory=dict)
    accounts: Mapping[str, Price] = dataclasses.field(default_factory=dict)
    overrides: Mapping[tuple[str, str], Price] = dataclasses.field(default_factory=dict)
    gpu_hour: Mapping[str, Decimal] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _CURRENCY_RE.match(self.currency):
            raise PriceError(f"currency: must be an ISO 4217 code like USD, got {self.currency!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceSheet:
        """Parse the dict form documented in the module; raises PriceError naming the field."""
        if not isinstance(data, Mapping):
            raise PriceError("prices: must be a mapping")
        unknown = sorted(set(data) - {"currency", "default", "models", "accounts", "overrides",
                                      "gpuHour"})
        if unknown:
            raise PriceError(f"{unknown[0]}: unknown key in price sheet")
        overrides: dict[tuple[str, str], Price] = {}
        for i, item in enumerate(data.get("overrides") or []):
            if not isinstance(item, Mapping) or not item.get("account") or not item.get("model"):
                raise PriceError(f"overrides[{i}]: needs account and model")
            overrides[(str(item["account"]), str(item["model"]))] = Price.from_dict(
                f"overrides[{i}]", item)
        return cls(
            currency=str(data.get("currency", "USD")),
            default=Price.from_dict("default", data.get("default") or {}),
            models={k: Price.from_dict(f"models.{k}", v)
                    for k, v in (data.get("models") or {}).items()},
            accounts={k: Price.from_dict(f"accounts.{k}", v)
                      for k, v in (data.get("accounts") or {}).items()},
            overrides=overrides,
            gpu_hour={k: _amount(f"gpuHour.{k}", v) for k, v in (data.get("gpuHour") or {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the canonical dict form (round-trips through :meth:`from_dict`)."""
        return {
            "currency": self.currency,
            "default": self.default.to_dict(),
            "models": {k: v.to_dict() for k, v in sorted(self.models.items())},
            "accounts": {k: v.to_dict() for k, v in sorted(self.accounts.items())},
            "overrides": [{"account": a, "model": m, **p.to_dict()}
                          for (a, m), p in sorted(self.overrides.items())],
            "gpuHour": {k: str(v) for k, v in sorted(self.gpu_hour.items())},
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), used to store the sheet in the ledger."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def resolve(self, account: str, namespace: str, model: str) -> ResolvedPrice:
        """Resolve each component, most specific first (see the module docstring)."""
        qualified = f"{namespace}/{model}"
        chain = [
            self.overrides.get((account, qualified)), self.overrides.get((account, model)),
            self.models.get(qualified), self.models.get(model),
            self.accounts.get(account), self.default,
        ]
        layers = [p for p in chain if p is not None]

        def pick(attr: str) -> Decimal:
            for layer in layers:
                value = getattr(layer, attr)
                if value is not None:
                    return value
            return Decimal(0)

        return ResolvedPrice(self.currency, pick("prompt_per_million"),
                             pick("generated_per_million"), pick("per_request"))

    def gpu_hour_price(self, pool: str) -> Decimal:
        """Price of one GPU-hour in ``pool`` (0 if the pool has no price)."""
        return self.gpu_hour.get(pool, Decimal(0))

    def with_pool_prices(self, gpu_node_pools: Iterable[Mapping[str, Any]]) -> PriceSheet:
        """Return a copy with GPU-hour prices taken from ``GPUNodePool`` objects (dicts).

        Pools already priced in the sheet keep the sheet's price. Raises PriceError if a
        pool is priced in another currency than the sheet.
        """
        prices = dict(self.gpu_hour)
        for obj in gpu_node_pools:
            name = str((obj.get("metadata") or {}).get("name", ""))
            spec = obj.get("spec") or {}
            if not name or spec.get("pricePerGpuHour") is None or name in self.gpu_hour:
                continue
            currency = spec.get("currency", self.currency)
            if currency != self.currency:
                raise PriceError(f"GPUNodePool {name}.spec.currency: {currency} differs from the "
                                 f"price sheet's {self.currency}")
            prices[name] = _amount(f"GPUNodePool {name}.spec.pricePerGpuHour",
                                   spec["pricePerGpuHour"])
        return dataclasses.replace(self, gpu_hour=prices)
