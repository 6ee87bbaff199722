"""Structured output end to end: the real ``openai`` client, the pod frontend, a real Triton and
the tiny random model. Every output that finishes with "stop" parses and validates; "length"
is reported when max_tokens cuts the grammar short; unconstrained requests running at the
same time keep their exact text.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import jsonschema
import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]
openai = pytest.importorskip("openai")
FRONT_MODEL = "tiny-chat"  # conftest.py's
Frontend = Any  # conftest.Frontend

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
}, "required": ["name", "age"]}
SCHEMAS: dict[str, dict[str, Any]] = {
    "required_fields": PERSON,
    "enums": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                               "size": {"enum": [1, 2, 3]}}, "required": ["color", "size"]},
    "arrays": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4},
    "nested": {"type": "object", "properties": {
        "team": {"type": "object", "properties": {"members": {"type": "array", "items": PERSON, "maxItems": 2},
                                                  "lead": {"anyOf": [PERSON, {"type": "null"}]}},
                 "required": ["members", "lead"]}}, "required": ["team"]},
}
REGEX = r"(yes|no), [a-z]{2,5} [0-9]{1,3}"
MESSAGES = [{"role": "user", "content": "Describe the cache as JSON."}]


def _client(front: Frontend) -> Any:
    return openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _fmt(name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_chat_outputs_validate_streamed_and_not(frontend: Frontend, name: str) -> None:
    client = _client(frontend)
    for temperature in (0.0, 1.0):
        out = client.chat.completions.create(model=FRONT_MODEL, messages=MESSAGES, max_tokens=300,
                                             temperature=temperature, seed=11, response_format=_fmt(name))
        assert out.choices[0].finish_reason == "stop", out.choices[0].message.content
        jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMAS[name])
        chunks = list(client.chat.completions.create(
            model=FRONT_MODEL, messages=MESSAGES, max_tokens=300, temperature=temperature, seed=11,
            response_format=_fmt(name), stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert text == out.choices[0].message.content  # same seed, same text, either way


def test_completions_json_object_and_regex(frontend: Frontend) -> None:
    client = _client(frontend)
    out = client.completions.create(model=FRONT_MODEL, prompt="The cache holds", max_tokens=400,
                                    temperature=0, extra_body={"response_format": {"type": "json_object"}})
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].text), dict)
    else:  # an unbounded object may run past max_tokens; then it says so
        assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 400
    for stream in (False, True):
        got = client.completions.create(model=FRONT_MODEL, prompt="Sampling turns", max_tokens=60,
                                        temperature=0.9, seed=3, stream=stream,
                                        extra_body={"response_format": {"type": "regex", "regex": REGEX}})
        text = "".join(c.choices[0].text for c in got if c.choices) if stream else got.choices[0].text
        assert re.fullmatch(REGEX, text), text


def test_max_tokens_that_cut_the_grammar_report_length(frontend: Frontend) -> None:
    out = _client(frontend).chat.completions.create(model=FRONT_MODEL, messages=MESSAGES, max_tokens=4,
                                                    response_format=_fmt("nested"))
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 4
    text = out.choices[0].message.content
    assert text and '{"team": '.startswith(text[:9]), text  # the grammar's start, cut off


def test_constrained_and_plain_requests_at_once(frontend: Frontend) -> None:
    client = _client(frontend)
    results: dict[str, Any] = {}

    def plain(key: str, prompt: str) -> None:
        results[key] = client.completions.create(model=FRONT_MODEL, prompt=prompt, max_tokens=40, temperature=0)

    def shaped(key: str, name: str) -> None:
        results[key] = client.chat.completions.create(model=FRONT_MODEL, messages=MESSAGES, max_tokens=300,
                                                      temperature=0.7, seed=5, response_format=_fmt(name))

    threads = [threading.Thread(target=plain, args=("p1", "The cache holds")),
               threading.Thread(target=shaped, args=("s1", "nested")),
               threading.Thread(target=plain, args=("p2", "Sampling turns")),
               threading.Thread(target=shaped, args=("s2", "enums"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results["p1"].choices[0].text == frontend.expected("The cache holds", 40)
    assert results["p2"].choices[0].text == frontend.expected("Sampling turns", 40)
    for key, name in (("s1", "nested"), ("s2", "enums")):
        choice = results[key].choices[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])


@pytest.mark.parametrize(("response_format", "param", "needle"), [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}},
     "response_format", "not a valid JSON Schema at type"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}},
     "response_format", "'uniqueItems' at #"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}},
     "response_format", "'format: date' at #/properties/d"),
    ({"type": "regex", "regex": "(a"}, "response_format", "cannot build a grammar"),
    ({"type": "xml"}, "response_format", "type must be one of"),
])
def test_bad_response_formats_are_400_naming_it(frontend: Frontend, response_format: dict[str, Any],
                                                param: str, needle: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(frontend).chat.completions.create(model=FRONT_MODEL, messages=MESSAGES, max_tokens=5,
                                                  response_format=response_format)
    error = info.value.body
    assert info.value.status_code == 400 and error["param"] == param and needle in error["message"], error
    with pytest.raises(openai.BadRequestError) as info:
        _client(frontend).completions.create(model=FRONT_MODEL, prompt="x", stop=["}"],
                                             extra_body={"response_format": {"type": "json_object"}})
    assert info.value.body["param"] == "stop"
