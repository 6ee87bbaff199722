"""OpenAI request validation: what a client sends is served as asked or refused naming the field."""

from __future__ import annotations

import msgspec
import pytest

from deepserve.engine.openai_api import (
    DONE_EVENT,
    MAX_BODY_BYTES,
    OpenAIError,
    chat_chunk,
    completion_response,
    parse_chat,
    parse_completion,
    sse_event,
)


def _err(fn, body: bytes) -> OpenAIError:  # type: ignore[no-untyped-def]
    with pytest.raises(OpenAIError) as info:
        fn(body)
    return info.value


def test_good_completion_keeps_every_parameter() -> None:
    req = parse_completion(
        b'{"model":"ns/m","prompt":"hi","max_tokens":5,"temperature":0,"top_p":0.5,"seed":3,'
        b'"stop":["a","b"],"n":1,"stream":true,"stream_options":{"include_usage":true}}'
    )
    assert (req.model, req.prompt, req.max_tokens, req.temperature, req.top_p, req.seed) == (
        "ns/m",
        "hi",
        5,
        0.0,
        0.5,
        3,
    )
    assert req.stop_list() == ["a", "b"] and req.stream and req.include_usage


def test_good_chat() -> None:
    req = parse_chat(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"x"}')
    assert req.messages[0].content == "hi" and req.stop_list() == ["x"] and not req.include_usage


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model":"m","prompt":"x","user":"u"}', "user"),
        (b'{"model":"m","prompt":"x","logprobs":2}', "logprobs"),
        (b'{"model":"m","prompt":"x","response_format":{"type":"xml"}}', "response_format"),
        (b'{"model":"m","prompt":"x","response_format":"json"}', "response_format"),
        (b'{"model":"m","prompt":"x","response_format":{"type":"json_schema","json_schema":'
         b'{"name":"s","schema":{"oneOf":[]}}}}', "response_format"),
        (b'{"model":"m","prompt":"x","stop":"}","response_format":{"type":"json_object"}}', "stop"),
        (b'{"prompt":"x"}', "model"),
        (b'{"model":"m"}', "prompt"),
        (b'{"model":"m","prompt":"x","temperature":"hot"}', "temperature"),
        (b'{"model":"m","prompt":"x","temperature":2.5}', "temperature"),
        (b'{"model":"m","prompt":"x","top_p":0}', "top_p"),
        (b'{"model":"m","prompt":"x","max_tokens":0}', "max_tokens"),
        (b'{"model":"m","prompt":"x","max_tokens":1.5}', "max_tokens"),
        (b'{"model":"m","prompt":"x","n":2}', "n"),
        (b'{"model":"m","prompt":"x","stop":["a","b","c","d","e"]}', "stop"),
        (b'{"model":"m","prompt":"x","stream_options":{"include_usage":true}}', "stream_options"),
        (
            b'{"model":"m","prompt":"x","stream":true,"stream_options":{"other":1}}',
            "stream_options",
        ),
    ],
)
def test_bad_completion_names_the_field(body: bytes, param: str) -> None:
    err = _err(parse_completion, body)
    assert err.status == 400 and err.param == param
    payload = msgspec.json.decode(err.body())
    assert (
        payload["error"]["param"] == param and payload["error"]["type"] == "invalid_request_error"
    )
    assert payload["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model":"m","messages":[]}', "messages"),
        (b'{"model":"m","messages":[{"role":"wizard","content":"x"}]}', "messages"),
        (b'{"model":"m","messages":[{"role":"user","content":1}]}', "messages[0].content"),
        (b'{"model":"m","messages":[{"role":"user","content":"x","name":"n"}]}', "messages[0]"),
    ],
)
def test_bad_chat_names_the_field(body: bytes, param: str) -> None:
    err = _err(parse_chat, body)
    assert err.status == 400 and err.param == param


def test_malformed_json_and_non_object_are_400() -> None:
    assert _err(parse_completion, b'{"model":').status == 400
    assert _err(parse_completion, b"[1,2]").status == 400


def test_oversized_body_is_413() -> None:
    body = b'{"model":"m","prompt":"' + b"x" * MAX_BODY_BYTES + b'"}'
    assert _err(parse_completion, body).status == 413


def test_shapes_are_openai_shapes() -> None:
    resp = completion_response("cmpl-1", "m", "hello", "stop", 3, 2)
    assert resp["choices"][0]["text"] == "hello"
    assert resp["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    event = sse_event(chat_chunk("c-1", "m", "he", None))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    chunk = msgspec.json.decode(event[len(b"data: ") :])
    assert (
        chunk["choices"][0]["delta"]["content"] == "he"
        and chunk["object"] == "chat.completion.chunk"
    )
    usage_only = chat_chunk(
        "c-1", "m", "", None, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    )
    assert usage_only["choices"] == [] and usage_only["usage"]["total_tokens"] == 2
    assert DONE_EVENT == b"data: [DONE]\n\n"


def test_response_format_is_served() -> None:
    body = (b'{"model":"m","prompt":"x","response_format":{"type":"json_schema","json_schema":'
            b'{"name":"s","schema":{"type":"object","properties":{"a":{"type":"integer"}}}}}}')
    fmt = parse_completion(body).output_format()
    assert fmt is not None and fmt.type == "json_schema" and fmt.name == "s"
    chat = parse_chat(b'{"model":"m","messages":[{"role":"user","content":"hi"}],'
                      b'"response_format":{"type":"regex","regex":"[0-9]+"}}').output_format()
    assert chat is not None and chat.regex == "[0-9]+"
    assert parse_completion(b'{"model":"m","prompt":"x","response_format":{"type":"text"}}').output_format() is None
