"""Apply a structural schema's defaults and check its simple constraints in Python.

The API server does this (and evaluates the CEL rules) before an object is stored; the
operator repeats the simple part so typed views built from any dict fail with the field's
name, and so unit tests can check manifests without a cluster.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from deepserve.operator.api.schema_types import Schema


class SpecError(ValueError):
    """An invalid field; ``field`` is its path, e.g. ``spec.scaling.minReplicas``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check_number(schema: Schema, value: Any, path: str) -> None:
    if "enum" in schema and value not in schema["enum"]:
        raise SpecError(path, f"must be one of {', '.join(map(str, schema['enum']))}; got {value}")
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and (value < lo or (schema.get("exclusiveMinimum") and value == lo)):
        raise SpecError(path, f"must be {'>' if schema.get('exclusiveMinimum') else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise SpecError(path, f"must be <= {hi}, got {value}")


def _check_string(schema: Schema, value: str, path: str) -> None:
    if "enum" in schema and value not in schema["enum"]:
        raise SpecError(path, f"must be one of {', '.join(schema['enum'])}; got {value!r}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise SpecError(path, f"must be at most {schema['maxLength']} characters")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise SpecError(path, f"{value!r} does not match {schema['pattern']}")


def _check_object(schema: Schema, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(path, f"must be an object, got {type(value).__name__}")
    props: dict[str, Schema] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, sub in value.items():
        if key in props:
            out[key] = conform(props[key], sub, f"{path}.{key}")
        elif extra is not None:
            out[key] = conform(extra, sub, f"{path}.{key}")
        else:
            raise SpecError(f"{path}.{key}", "unknown field")
    for key, sub in props.items():
        if key not in out and "default" in sub:
            out[key] = conform(sub, copy.deepcopy(sub["default"]), f"{path}.{key}")
    for key in schema.get("required", []):
        if key not in out:
            raise SpecError(f"{path}.{key}", "required value")
    if "minProperties" in schema and len(out) < schema["minProperties"]:
        raise SpecError(path, f"needs at least {schema['minProperties']} entries")
    if "maxProperties" in schema and len(out) > schema["maxProperties"]:
        raise SpecError(path, f"takes at most {schema['maxProperties']} entries")
    return out


def conform(schema: Schema, value: Any, path: str) -> Any:
    """Return ``value`` with defaults applied; raise SpecError naming the first bad field."""
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SpecError(path, "must be an integer or a quantity string")
        if isinstance(value, str):
            _check_string({"pattern": schema["pattern"]}, value, path)
        return value
    kind = schema.get("type")
    if kind == "object":
        return _check_object(schema, value, path)
    if kind == "array":
        if not isinstance(value, list):
            raise SpecError(path, "must be a list")
        if len(value) > schema.get("maxItems", len(value)):
            raise SpecError(path, f"must have at most {schema['maxItems']} items")
        items = [conform(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
        if schema.get("x-kubernetes-list-type") == "set" and len(set(map(repr, items))) != len(items):
            raise SpecError(path, "items must be unique")
        return items
    if kind == "string":
        if not isinstance(value, str):
            raise SpecError(path, f"must be a string, got {type(value).__name__}")
        _check_string(schema, value, path)
        return value
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"must be an integer, got {value!r}")
        _check_number(schema, value, path)
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(path, f"must be a number, got {value!r}")
        _check_number(schema, value, path)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise SpecError(path, f"must be true or false, got {value!r}")
        return value
    return value
