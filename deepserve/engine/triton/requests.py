"""Parse and validate one Triton request's input tensors (numpy arrays by name).

Kept apart from the backend so it can be tested without Triton: every bad input raises
:class:`InvalidRequestError` naming the tensor, which the backend answers with a
``TritonError.INVALID_ARG`` (HTTP 400) while it keeps serving other requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from deepserve.engine.sampling import InvalidRequestError, SamplingParams
from deepserve.engine.structured.spec import FIELD as FORMAT_FIELD
from deepserve.engine.structured.spec import (
    ResponseFormat,
    ResponseFormatError,
    response_format_from_json,
)
from deepserve.engine.triton.chat_template import MESSAGES_FIELD, parse_messages
from deepserve.engine.triton.protocol import DEFAULT_MAX_TOKENS, INPUTS

_KIND = {"TYPE_STRING": "string", "TYPE_INT32": "int", "TYPE_INT64": "int",
         "TYPE_FP32": "float", "TYPE_BOOL": "bool"}
_SPECS = {spec.name: spec for spec in INPUTS}
MAX_PROMPT_BYTES = 1 << 20
MAX_STOP_STRINGS, MAX_STOP_BYTES = 16, 1024


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request: the prompt, sampling parameters and routing/billing tags."""

    prompt: str
    params: SamplingParams
    stream: bool
    tenant: str | None
    messages: list[dict[str, str]] | None = None  # chat: the prompt is rendered from these


def _text(name: str, value: object) -> str:
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(name, "must be UTF-8 text") from exc
    if isinstance(value, str):
        return value
    raise InvalidRequestError(name, f"must be a string, got {type(value).__name__}")


def _scalar(name: str, array: np.ndarray) -> object:
    kind = _KIND[_SPECS[name].data_type]
    if array.size != 1:
        raise InvalidRequestError(name, f"must hold exactly one value, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if kind == "string":
        return _text(name, value)
    if kind == "int" and not np.issubdtype(array.dtype, np.integer):
        raise InvalidRequestError(name, f"must be an integer, got {array.dtype}")
    if kind == "float" and not (np.issubdtype(array.dtype, np.floating)
                                or np.issubdtype(array.dtype, np.integer)):
        raise InvalidRequestError(name, f"must be a number, got {array.dtype}")
    if kind == "bool" and array.dtype != np.bool_:
        raise InvalidRequestError(name, f"must be a boolean, got {array.dtype}")
    return value.item() if hasattr(value, "item") else value


def _response_format(raw: str) -> ResponseFormat | None:
    if not raw:
        return None
    if len(raw.encode()) > MAX_PROMPT_BYTES:
        raise InvalidRequestError(FORMAT_FIELD, f"is larger than {MAX_PROMPT_BYTES} bytes")
    try:
        return response_format_from_json(raw)
    except ResponseFormatError as exc:
        raise InvalidRequestError(FORMAT_FIELD, str(exc)) from exc


def parse_request(inputs: Mapping[str, np.ndarray | None]) -> ParsedRequest:
    """Validate the inputs of one request and return a :class:`ParsedRequest`."""
    unknown = sorted(set(inputs) - set(_SPECS))
    if unknown:
        raise InvalidRequestError(unknown[0], "unknown input")
    raw, raw_chat = inputs.get("text_input"), inputs.get(MESSAGES_FIELD)
    if (raw is None) == (raw_chat is None):
        raise InvalidRequestError("text_input", f"give exactly one of text_input and {MESSAGES_FIELD}")
    name = "text_input" if raw is not None else MESSAGES_FIELD
    prompt = str(_scalar(name, raw if raw is not None else raw_chat))  # type: ignore[arg-type]
    if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise InvalidRequestError(name, f"is larger than {MAX_PROMPT_BYTES} bytes")
    messages = parse_messages(prompt) if raw_chat is not None else None
    if messages is None and not prompt.strip():
        raise InvalidRequestError("text_input", "prompt must not be empty")

    def get(name: str, default: object) -> object:
        array = inputs.get(name)
        return default if array is None else _scalar(name, array)

    stop_array = inputs.get("stop")
    stop: tuple[str, ...] = ()
    if stop_array is not None:
        stop = tuple(_text("stop", v) for v in np.asarray(stop_array).reshape(-1))
        if len(stop) > MAX_STOP_STRINGS or any(len(s.encode()) > MAX_STOP_BYTES for s in stop):
            raise InvalidRequestError(
                "stop", f"at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_BYTES} bytes")
    tenant = str(get("tenant", "")) or None
    if tenant is not None and (len(tenant) > 128 or not tenant.isprintable()):
        raise InvalidRequestError("tenant", "must be at most 128 printable characters")
    seed = get("seed", None)
    params = SamplingParams(
        response_format=_response_format(str(get(FORMAT_FIELD, ""))),
        max_tokens=int(get("max_tokens", DEFAULT_MAX_TOKENS)),  # type: ignore[call-overload]
        temperature=float(get("temperature", 0.0)),  # type: ignore[arg-type]
        top_k=int(get("top_k", 0)),  # type: ignore[call-overload]
        top_p=float(get("top_p", 1.0)),  # type: ignore[arg-type]
        seed=None if seed is None else int(seed),  # type: ignore[call-overload]
        stop=stop,
    )
    return ParsedRequest("" if messages else prompt, params, bool(get("stream", True)), tenant,
                         messages)
