"""Tiny constructors for OpenAPI v3 (structural) schema fragments.

They keep the CRD source of truth readable: every constructor takes the field's
description first, so a field without a description cannot be written by accident.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes label/annotation keys and values (apimachinery validation.IsQualifiedName,
# IsValidLabelValue): an optional DNS-subdomain prefix and "/", then a name of at most 63.
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# A container image reference (distribution/reference grammar, simplified): [host[:port]/]path
# components in lowercase, an optional :tag and @digest; no whitespace, which the API server
# admits and the kubelet refuses (InvalidImageName).
_PATH_COMPONENT = r"[a-z0-9]+([._-]+[a-z0-9]+)*"
IMAGE_REFERENCE = (r"^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*(:[0-9]+)?/)?"
                   rf"{_PATH_COMPONENT}(/{_PATH_COMPONENT})*(:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
                   r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")
QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"


def rule(expr: str, message: str, field_path: str | None = None, reason: str | None = None) -> Schema:
    """One ``x-kubernetes-validations`` CEL rule; ``message`` must name the field."""
    out: Schema = {"rule": expr, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def string(
    description: str,
    *,
    enum: list[str] | None = None,
    pattern: str | None = None,
    default: str | None = None,
    max_length: int | None = 253,
    min_length: int | None = None,
    rules: list[Schema] | None = None,
) -> Schema:
    """A string field."""
    out: Schema = {"type": "string", "description": description}
    if enum is not None:
        out["enum"] = list(enum)
    if pattern is not None:
        out["pattern"] = pattern
    if default is not None:
        out["default"] = default
    if max_length is not None and enum is None:
        out["maxLength"] = max_length
    if min_length is not None:
        out["minLength"] = min_length
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def integer(
    description: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    default: int | None = None,
) -> Schema:
    """A 64-bit integer field with optional bounds and default."""
    out: Schema = {"type": "integer", "format": "int64", "description": description}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    if default is not None:
        out["default"] = default
    return out


def number(
    description: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    default: float | None = None,
) -> Schema:
    """A floating-point field."""
    out: Schema = {"type": "number", "description": description}
    if minimum is not None:
        out["minimum"] = minimum
        if exclusive_minimum:
            out["exclusiveMinimum"] = True
    if maximum is not None:
        out["maximum"] = maximum
    if default is not None:
        out["default"] = default
    return out


def boolean(description: str, *, default: bool | None = None) -> Schema:
    """A boolean field."""
    out: Schema = {"type": "boolean", "description": description}
    if default is not None:
        out["default"] = default
    return out


def quantity(description: str, *, default: str | None = None) -> Schema:
    """A Kubernetes resource quantity ("4", "500m", "16Gi")."""
    out: Schema = {
        "description": description,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY,
        "x-kubernetes-int-or-string": True,
    }
    if default is not None:
        out["default"] = default
    return out


def obj(
    description: str,
    properties: dict[str, Schema],
    *,
    required: list[str] | None = None,
    rules: list[Schema] | None = None,
    default: dict[str, Any] | None = None,
) -> Schema:
    """An object with fixed properties (unknown fields are pruned by the API server)."""
    out: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        out["required"] = list(required)
    if rules:
        out["x-kubernetes-validations"] = rules
    if default is not None:
        out["default"] = default
    return out


def string_map(description: str, *, max_properties: int = 32) -> Schema:
    """A map of string to string (labels, selectors)."""
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string", "maxLength": 253},
        "maxProperties": max_properties,
    }


def label_map(description: str, field: str, *, max_properties: int = 32) -> Schema:
    """A map of label keys to label values (a nodeSelector), both checked like the pod API does."""
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
        "maxProperties": max_properties,
        "x-kubernetes-validations": [rule(
            f"self.all(k, size(k) <= 316 && (k.indexOf('/') < 0 || k.indexOf('/') <= 253) && "
            f"k.matches('{QUALIFIED_NAME.replace(chr(92), chr(92) * 2)}'))",
            f"{field} keys must be label keys: an optional DNS-subdomain prefix and '/', then a name of "
            "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")],
    }


def array(
    description: str,
    items: Schema,
    *,
    max_items: int,
    list_type: str = "atomic",
    map_keys: list[str] | None = None,
    rules: list[Schema] | None = None,
) -> Schema:
    """A bounded list (bounds keep CEL cost estimates within the API server's budget)."""
    out: Schema = {
        "type": "array",
        "description": description,
        "items": items,
        "maxItems": max_items,
        "x-kubernetes-list-type": list_type,
    }
    if map_keys:
        out["x-kubernetes-list-map-keys"] = map_keys
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def condition_schema() -> Schema:
    """The standard ``metav1.Condition`` shape."""
    return obj(
        "A condition in the standard Kubernetes shape.",
        {
            "type": string("Condition type: Ready, Scheduled, Progressing or Degraded.", max_length=316),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string("One CamelCase word saying why.", max_length=1024),
            "message": string("A human readable explanation.", max_length=32768),
            "observedGeneration": integer("The .metadata.generation this condition was computed for.", minimum=0),
            "lastTransitionTime": {
                "type": "string",
                "format": "date-time",
                "description": "When the status last changed.",
            },
        },
        required=["type", "status"],
    )
