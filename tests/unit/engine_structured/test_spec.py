"""response_format parsing: the OpenAI forms, the regex extension, refusals that name the problem."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deepserve.engine.structured.spec import (
    ResponseFormat,
    ResponseFormatError,
    parse_response_format,
    response_format_from_json,
)

PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def _schema(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def test_forms_parse_and_round_trip_through_the_wire_form() -> None:
    assert parse_response_format(None) is None
    assert parse_response_format({"type": "text"}) is None
    assert parse_response_format({"type": "json_object"}) == ResponseFormat("json_object")
    regex = parse_response_format({"type": "regex", "regex": "[a-z]+"})
    assert regex == ResponseFormat("regex", regex="[a-z]+")
    fmt = parse_response_format({"type": "json_schema", "json_schema": {
        "name": "person", "schema": PERSON, "strict": True, "description": "a person"}})
    assert fmt is not None and fmt.type == "json_schema" and json.loads(fmt.schema) == PERSON
    for parsed in (regex, fmt, ResponseFormat("json_object")):
        assert parsed is not None and response_format_from_json(parsed.to_json()) == parsed


@pytest.mark.parametrize(("value", "needle"), [
    ("json", "must be an object"),
    ({"type": "xml"}, "type must be one of"),
    ({"type": "json_object", "schema": {}}, "unknown field 'schema'"),
    ({"type": "regex"}, "regex must be a non-empty string"),
    ({"type": "regex", "regex": "x" * 5000}, "longer than"),
    ({"type": "json_schema"}, "json_schema must be an object"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": PERSON, "strict": "yes"}}, "strict"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": [1]}}, "json_schema.schema must be"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": PERSON, "x": 1}}, "json_schema.x"),
])
def test_malformed_response_formats_are_refused(value: Any, needle: str) -> None:
    with pytest.raises(ResponseFormatError, match=needle.replace(".", r"\.")):
        parse_response_format(value)


@pytest.mark.parametrize(("schema", "named"), [
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "'oneOf' at # (enforced only as anyOf"),
    ({"allOf": [{"type": "integer"}]}, "'allOf' at #"),
    ({"type": "integer", "not": {"const": 1}}, "'not' at #"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "'uniqueItems' at #"),
    ({"type": "object", "properties": {"when": {"type": "string", "format": "date"}}},
     "'format: date' at #/properties/when"),
    ({"type": "array", "items": {"type": "object", "properties": {"a": {"if": {}}}}},
     "'if' at #/items/properties/a"),
    ({"$ref": "https://example.com/s.json"}, "only local references"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "'dependentRequired' at #"),
])
def test_unsupported_schema_features_are_refused_by_name(schema: Any, named: str) -> None:
    with pytest.raises(ResponseFormatError, match="unsupported JSON Schema features") as info:
        parse_response_format(_schema(schema))
    assert named in str(info.value)


def test_a_property_may_be_called_like_a_keyword_and_annotations_are_allowed() -> None:
    schema = {"title": "T", "description": "d", "$schema": "https://json-schema.org/draft/2020-12/schema",
              "type": "object", "properties": {"oneOf": {"type": "string", "examples": ["x"]}}}
    assert parse_response_format(_schema(schema)) is not None


@pytest.mark.parametrize(("schema", "where"), [
    ({"type": "strin"}, "type"),
    ({"type": "string", "minLength": -1}, "minLength"),
    ({"type": "object", "required": "name"}, "required"),
])
def test_invalid_schemas_are_refused_with_their_location(schema: Any, where: str) -> None:
    with pytest.raises(ResponseFormatError, match="not a valid JSON Schema at") as info:
        parse_response_format(_schema(schema))
    assert where in str(info.value)
    # the gateway skips the meta-schema check (no jsonschema there); the pod does it
    assert parse_response_format(_schema(schema), validate_schema=False) is not None


def test_deep_schemas_are_refused() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(40):
        schema = {"type": "array", "items": schema}
    with pytest.raises(ResponseFormatError, match="nests deeper"):
        parse_response_format(_schema(schema))
