"""OpenAI-compatible request validation and response shapes, shared by the pod and the gateway.

Torch-free on purpose: the gateway imports it. Requests follow the OpenAI API reference
(https://platform.openai.com/docs/api-reference/completions and .../chat) restricted to the
parameters deepserve serves: ``model, prompt | messages, max_tokens, temperature, top_p, seed,
stop, n (1 only), stream, stream_options.include_usage, response_format`` (``text``,
``json_object``, ``json_schema`` and deepserve's ``regex``: :mod:`deepserve.engine.structured.spec`;
the schema's meta-schema check and its grammar are the pod's). Any other field is refused with 400
naming it, so a client never believes a parameter took effect when it did not. Errors render as
OpenAI error JSON ``{"error": {"message", "type", "param", "code"}}``; streams are Server-Sent
Events (https://html.spec.whatwg.org/multipage/server-sent-events.html) ending ``data: [DONE]``.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

from deepserve.engine.structured.spec import (
    ResponseFormat,
    ResponseFormatError,
    parse_response_format,
)

MAX_BODY_BYTES: Final = 1 << 20  # 1 MiB: larger bodies answer 413
MAX_STOP_SEQUENCES: Final = 4
DONE_EVENT: Final = b"data: [DONE]\n\n"

_COMMON: Final = frozenset(
    {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options",
     "response_format"}
)
COMPLETION_FIELDS: Final = _COMMON | {"prompt"}
CHAT_FIELDS: Final = _COMMON | {"messages"}
CHAT_ROLES: Final = frozenset({"system", "user", "assistant"})


class OpenAIError(Exception):
    """A request the API refuses; ``body()`` is the OpenAI error JSON to send with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type
        self.code = code

    def body(self) -> bytes:
        """The error as OpenAI error JSON bytes."""
        return msgspec.json.encode(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    """``stream_options``: only ``include_usage`` is served."""

    include_usage: bool = False


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    """One chat message; content is plain text."""

    role: str
    content: str


class _Common(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        """True when a streaming caller asked for the final usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    def output_format(self) -> ResponseFormat | None:
        """The checked ``response_format`` (None for text); raises :class:`OpenAIError` (400)."""
        try:
            return parse_response_format(self.response_format, validate_schema=False)
        except ResponseFormatError as exc:
            raise _bad(f"response_format: {exc}", "response_format") from exc

    def stop_list(self) -> list[str]:
        """``stop`` as a list (empty when not given)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Common, kw_only=True):
    """``POST /v1/completions`` body; ``prompt`` is one string."""

    prompt: str


class ChatRequest(_Common, kw_only=True):
    """``POST /v1/chat/completions`` body."""

    messages: list[ChatMessage]


def _bad(message: str, param: str | None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def _decode_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise OpenAIError(
            413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large"
        )
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise _bad(f"request body is not valid JSON: {exc}", None) from exc
    if not isinstance(obj, dict):
        raise _bad("request body must be a JSON object", None)
    return obj


def _convert(obj: dict[str, Any], allowed: frozenset[str], kind: type[_Common]) -> Any:
    for name in obj:
        if name not in allowed:
            raise _bad(f"unsupported parameter: '{name}'", name)
    if "model" not in obj:
        raise _bad("missing required parameter: 'model'", "model")
    try:
        return msgspec.convert(obj, kind, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = _param_of(text)
        raise _bad(f"invalid request: {text}", param) from exc


def _param_of(text: str) -> str | None:
    """The field named in a msgspec error (``... - at `$.temperature` ``, or ``field `x` ``)."""
    if "at `$." in text:
        return text.split("at `$.", 1)[1].split("`", 1)[0] or None
    if "field `" in text:
        return text.split("field `", 1)[1].split("`", 1)[0]
    return None


def _check_ranges(req: _Common) -> None:
    if not req.model:
        raise _bad("'model' must not be empty", "model")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise _bad("'max_tokens' must be at least 1", "max_tokens")
    if not 0.0 <= req.temperature <= 2.0:
        raise _bad("'temperature' must be between 0 and 2", "temperature")
    if not 0.0 < req.top_p <= 1.0:
        raise _bad("'top_p' must be greater than 0 and at most 1", "top_p")
    if req.n != 1:
        raise _bad("only n=1 is supported", "n")
    stops = req.stop_list()
    if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
        raise _bad(f"'stop' takes at most {MAX_STOP_SEQUENCES} non-empty strings", "stop")
    if req.stream_options is not None and not req.stream:
        raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
    if req.output_format() is not None and stops:  # a stop string would cut the grammar short
        raise _bad("'stop' cannot be combined with 'response_format'", "stop")


def parse_completion(body: bytes) -> CompletionRequest:
    """Validate a completions body; raises :class:`OpenAIError` (400/413) naming the field."""
    req: CompletionRequest = _convert(_decode_object(body), COMPLETION_FIELDS, CompletionRequest)
    _check_ranges(req)
    return req


def parse_chat(body: bytes) -> ChatRequest:
    """Validate a chat completions body; raises :class:`OpenAIError` (400/413) naming the field."""
    req: ChatRequest = _convert(_decode_object(body), CHAT_FIELDS, ChatRequest)
    _check_ranges(req)
    if not req.messages:
        raise _bad("'messages' must not be empty", "messages")
    for i, m in enumerate(req.messages):
        if m.role not in CHAT_ROLES:
            raise _bad(f"messages[{i}].role must be one of {sorted(CHAT_ROLES)}", "messages")
    return req


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The OpenAI ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    request_id: str,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A non-streaming ``text_completion`` object."""
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_response(
    request_id: str,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(
    request_id: str,
    model: str,
    text: str,
    finish_reason: str | None,
    usage_obj: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk; a usage-only chunk has ``choices: []``."""
    choices = (
        []
        if usage_obj is not None
        else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]
    )
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage_obj,
    }


def chat_chunk(
    request_id: str,
    model: str,
    text: str,
    finish_reason: str | None,
    usage_obj: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk``; a usage-only chunk has ``choices: []``."""
    choices = (
        []
        if usage_obj is not None
        else [{"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}]
    )
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage_obj,
    }


def sse_event(obj: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying ``obj`` as JSON."""
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"
