"""The OpenAI ``response_format`` of a request: parsed, checked, and carried to the engine.

Forms (https://platform.openai.com/docs/api-reference/chat/create#chat-create-response_format):
``{"type": "text"}`` (no constraint), ``{"type": "json_object"}`` (any JSON object),
``{"type": "json_schema", "json_schema": {"name", "schema", "strict"?, "description"?}}``,
and deepserve's extension ``{"type": "regex", "regex": "<pattern>"}`` (the whole output
matches the pattern). A schema may use only the keywords in :data:`SUPPORTED_KEYWORDS`
(each one is enforced by the grammar; tested) plus annotations; anything else is refused
with the keyword's name, never ignored. No torch and no xgrammar here: the gateway imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

FIELD: Final = "response_format"
MAX_SCHEMA_BYTES: Final = 64 << 10
MAX_REGEX_BYTES: Final = 4 << 10
MAX_SCHEMA_DEPTH: Final = 32

# keywords the grammar enforces exactly (tests/unit/engine/structured: random logits under
# the mask, every finished output validated by jsonschema)
SUPPORTED_KEYWORDS: Final = frozenset({
    "type", "enum", "const", "anyOf", "$ref", "$defs", "definitions",
    "properties", "required", "additionalProperties", "patternProperties", "propertyNames",
    "minProperties", "maxProperties",
    "items", "prefixItems", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
})
# annotations: they constrain nothing, so they are allowed and have no effect
ANNOTATIONS: Final = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly",
})
# string formats whose grammar matched jsonschema's format checker in every sample; the rest
# (date, date-time, time, ipv4: xgrammar admits Feb 30, second 60, leading zeros; email, uri,
# hostname: not checked) are refused
SUPPORTED_FORMATS: Final = frozenset({"uuid", "ipv6"})
_SUBSCHEMA_MAPS: Final = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_ONE: Final = ("additionalProperties", "propertyNames", "items")
_SUBSCHEMA_LISTS: Final = ("anyOf", "prefixItems")
# why the commonest refusals are refused (the message says it)
_WHY: Final = {
    "oneOf": "enforced only as anyOf; use anyOf",
    "allOf": "not enforced by the grammar; merge the subschemas",
    "not": "not enforced by the grammar",
    "uniqueItems": "not enforced by the grammar",
    "contains": "not enforced by the grammar",
}


class ResponseFormatError(ValueError):
    """``response_format`` is malformed or asks for something not served (HTTP 400)."""


@dataclass(frozen=True)
class ResponseFormat:
    """What the output must be. ``type`` is ``json_object``, ``json_schema`` or ``regex``."""

    type: str
    schema: str = ""  # json_schema: the schema as canonical JSON text (sorted keys)
    regex: str = ""
    name: str = ""  # json_schema: its name (OpenAI requires one)

    def to_json(self) -> str:
        """The OpenAI object this was parsed from (the wire form to the engine)."""
        if self.type == "json_schema":
            return json.dumps({"type": self.type, "json_schema": {
                "name": self.name, "schema": json.loads(self.schema)}})
        if self.type == "regex":
            return json.dumps({"type": self.type, "regex": self.regex})
        return json.dumps({"type": self.type})


def parse_response_format(obj: Any, validate_schema: bool = True) -> ResponseFormat | None:
    """Check an OpenAI ``response_format`` value; None for ``{"type": "text"}`` or null.

    ``validate_schema`` also checks the schema against the JSON Schema 2020-12 meta-schema
    (the jsonschema library; the engine does, the gateway need not). Raises
    :class:`ResponseFormatError` naming what is wrong.
    """
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ResponseFormatError("must be an object with a 'type'")
    kind = obj.get("type")
    allowed = {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", "json_schema"},
               "regex": {"type", "regex"}}
    if kind not in allowed:
        raise ResponseFormatError(f"type must be one of {sorted(allowed)}, got {kind!r}")
    extra = sorted(set(obj) - allowed[kind])
    if extra:
        raise ResponseFormatError(f"unknown field '{extra[0]}' for type {kind!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "regex":
        return ResponseFormat("regex", regex=_regex(obj.get("regex")))
    return _json_schema(obj.get("json_schema"), validate_schema)


def response_format_from_json(text: str) -> ResponseFormat | None:
    """Parse the wire form (:meth:`ResponseFormat.to_json`, or any OpenAI object as JSON)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ResponseFormatError(f"is not valid JSON: {exc}") from exc
    return parse_response_format(obj)


def _regex(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ResponseFormatError("regex must be a non-empty string")
    if len(value.encode()) > MAX_REGEX_BYTES:
        raise ResponseFormatError(f"regex is longer than {MAX_REGEX_BYTES} bytes")
    return value


def _json_schema(spec: Any, validate_schema: bool) -> ResponseFormat:
    if not isinstance(spec, dict):
        raise ResponseFormatError("json_schema must be an object with 'name' and 'schema'")
    extra = sorted(set(spec) - {"name", "schema", "strict", "description"})
    if extra:
        raise ResponseFormatError(f"unknown field 'json_schema.{extra[0]}'")
    name = spec.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise ResponseFormatError("json_schema.name must be a string of 1 to 64 characters")
    if "strict" in spec and not isinstance(spec["strict"], bool):
        raise ResponseFormatError("json_schema.strict must be a boolean")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise ResponseFormatError("json_schema.schema must be a JSON Schema object")
    text = json.dumps(schema, sort_keys=True)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise ResponseFormatError(f"json_schema.schema is larger than {MAX_SCHEMA_BYTES} bytes")
    check_keywords(schema)
    if validate_schema:
        check_meta_schema(schema)
    return ResponseFormat("json_schema", schema=text, name=name)


def check_keywords(schema: dict[str, Any]) -> None:
    """Refuse keywords the grammar would not enforce, naming each with its path."""
    unsupported: list[str] = []
    for path, node in _subschemas(schema, "#", 0):
        for key, value in node.items():
            if key in ANNOTATIONS:
                continue
            if key not in SUPPORTED_KEYWORDS:
                why = _WHY.get(key, "not supported")
                unsupported.append(f"'{key}' at {path} ({why})")
            elif key == "format" and value not in SUPPORTED_FORMATS:
                unsupported.append(f"'format: {value}' at {path} (supported: "
                                   f"{', '.join(sorted(SUPPORTED_FORMATS))})")
            elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
                unsupported.append(f"'$ref: {value}' at {path} (only local references '#...')")
    if unsupported:
        raise ResponseFormatError("json_schema.schema uses unsupported JSON Schema features: "
                                  + "; ".join(unsupported[:8]))


def _subschemas(node: Any, path: str, depth: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object subschema under ``node`` with its JSON pointer (booleans are schemas too)."""
    if not isinstance(node, dict):
        return
    if depth > MAX_SCHEMA_DEPTH:
        raise ResponseFormatError(f"json_schema.schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    yield path, node
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                yield from _subschemas(sub, f"{path}/{key}/{name}", depth + 1)
    for key in _SUBSCHEMA_ONE:
        yield from _subschemas(node.get(key), f"{path}/{key}", depth + 1)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            for i, sub in enumerate(node[key]):
                yield from _subschemas(sub, f"{path}/{key}/{i}", depth + 1)


def check_meta_schema(schema: dict[str, Any]) -> None:
    """Validate ``schema`` against the JSON Schema 2020-12 meta-schema (jsonschema)."""
    import jsonschema  # the engine's dependency; the gateway calls with validate_schema=False

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ResponseFormatError(f"json_schema.schema is not a valid JSON Schema at {where}: "
                                  f"{exc.message}") from exc
