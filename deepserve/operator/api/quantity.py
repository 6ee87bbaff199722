"""Kubernetes resource quantities ("500m", "8Gi", "1e3") as exact decimals, and bounded fields.

The API server's CEL ``quantity()`` library checks the bounds at admission; :func:`parse_quantity`
is the Python twin the typed views use (apimachinery ``resource.Quantity`` suffixes).
"""

from __future__ import annotations

import re
from decimal import Decimal

from deepserve.operator.api.schema_types import QUANTITY, Schema, quantity, rule

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
_SPLIT = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")


def parse_quantity(value: str | int) -> Decimal:
    """The exact value of a quantity; raises ValueError when it is not one."""
    if isinstance(value, int):
        return Decimal(value)
    m = _SPLIT.match(value) if re.match(QUANTITY, value) else None
    if m is None:
        raise ValueError(f"{value!r} is not a quantity")
    number, suffix = Decimal(m.group(1)), m.group(2)
    try:
        if suffix in _BINARY:
            return number * _BINARY[suffix]
        if suffix in _DECIMAL:
            return number * _DECIMAL[suffix]
        return number * (Decimal(10) ** Decimal(suffix[1:]))  # e/E exponent
    except ArithmeticError as e:  # an exponent beyond the decimal context
        raise ValueError(f"{value!r} is not a quantity") from e


def bounded_quantity(description: str, field: str, *, maximum: str, default: str | None = None) -> Schema:
    """A quantity field that must be > 0 and <= ``maximum`` (a quantity string)."""
    out = quantity(description, default=default)
    out["x-kubernetes-validations"] = [rule(
        f"isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0')) && "
        f"!quantity(string(self)).isGreaterThan(quantity('{maximum}'))",
        f"{field} must be a quantity greater than 0 and at most {maximum}")]
    return out


def quantity_error(value: str | int, maximum: str) -> str | None:
    """Why ``value`` breaks :func:`bounded_quantity`'s rule, or None."""
    try:
        q = parse_quantity(value)
    except ValueError as e:
        return str(e)
    if q <= 0:
        return f"must be greater than 0, got {value}"
    if q > parse_quantity(maximum):
        return f"must be at most {maximum}, got {value}"
    return None
