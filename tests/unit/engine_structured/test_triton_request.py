"""The Triton input ``response_format``: parsed into the sampling parameters, refusals name it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepserve.engine.sampling import InvalidRequestError
from deepserve.engine.structured.spec import ResponseFormat
from deepserve.engine.triton.requests import parse_request


def _inputs(fmt: str, **extra: np.ndarray) -> dict[str, np.ndarray]:
    return {"text_input": np.array([b"hi"], dtype=np.object_),
            "response_format": np.array([fmt.encode()], dtype=np.object_), **extra}


def test_response_format_input_reaches_the_sampling_parameters() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    wire = json.dumps({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    fmt = parse_request(_inputs(wire)).params.response_format
    assert fmt is not None and fmt.type == "json_schema" and json.loads(fmt.schema) == schema
    assert parse_request(_inputs('{"type": "regex", "regex": "a+"}')).params.response_format == \
        ResponseFormat("regex", regex="a+")
    assert parse_request(_inputs('{"type": "text"}')).params.response_format is None
    assert parse_request({"text_input": np.array([b"hi"], dtype=np.object_)}).params.response_format is None


@pytest.mark.parametrize(("raw", "field", "needle"), [
    ("{", "response_format", "not valid JSON"),
    ('{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "intger"}}}',
     "response_format", "not a valid JSON Schema"),  # the pod checks the meta-schema
    ('{"type": "json_schema", "json_schema": {"name": "x", "schema": {"allOf": []}}}',
     "response_format", "'allOf'"),
])
def test_bad_response_formats_are_refused_naming_the_input(raw: str, field: str, needle: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(_inputs(raw))
    assert info.value.field == field and needle in str(info.value)


def test_stop_strings_are_refused_with_a_response_format() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(_inputs('{"type": "json_object"}', stop=np.array([b"}"], dtype=np.object_)))
    assert info.value.field == "stop"
