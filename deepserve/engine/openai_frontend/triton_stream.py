"""One generation on the pod's Triton over gRPC decoupled streaming (tritonclient aio).

Every request runs as its own bidirectional stream with ``stream=true``, so text arrives
token by token whether or not the OpenAI caller streams, and cancelling the stream
(:meth:`TritonGenerator.generate`'s ``finally``: the caller went away) cancels the Triton
request; the backend's loop sees ``is_cancelled()`` at its next decode step.
The request/response tensors are :mod:`deepserve.engine.triton.protocol`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepserve.engine.triton.protocol import INPUTS

log = logging.getLogger(__name__)
_INPUT_NAMES = frozenset(spec.name for spec in INPUTS)


@dataclass(frozen=True)
class EngineRequest:
    """What the frontend asks of the engine (already validated as OpenAI input)."""

    request_id: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    tenant: str | None = None
    response_format: str | None = None  # the checked OpenAI object as JSON (constrained output)


@dataclass(frozen=True)
class Piece:
    """New text and the token counts so far; ``finish_reason`` is set on the last piece."""

    text: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str | None


class EngineError(Exception):
    """The engine refused or failed a request; ``field`` names the Triton input at fault."""

    def __init__(self, message: str, field_name: str | None, invalid: bool) -> None:
        super().__init__(message)
        self.message = message
        self.field = field_name
        self.invalid = invalid  # True: the caller's fault (400); False: ours (500/503)


def engine_error(message: str) -> EngineError:
    """Classify a Triton error message: the backend names the input (``"max_tokens: ..."``)."""
    text = message.split("] ", 1)[1] if message.startswith("[StatusCode.") else message
    name = text.split(":", 1)[0].strip()
    if name in _INPUT_NAMES:
        return EngineError(text.split(":", 1)[1].strip(), name, invalid=True)
    return EngineError(text, None, invalid=False)


def _tensor(grpc: Any, name: str, value: Any, dtype: str, np_dtype: Any) -> Any:
    data = np.array(value if isinstance(value, list) else [value], dtype=np_dtype)
    tensor = grpc.InferInput(name, list(data.shape), dtype)
    tensor.set_data_from_numpy(data)
    return tensor


def build_inputs(grpc: Any, req: EngineRequest) -> list[Any]:
    """The Triton input tensors for ``req`` (always streaming)."""
    inputs = [_tensor(grpc, "stream", True, "BOOL", np.bool_),
              _tensor(grpc, "temperature", req.temperature, "FP32", np.float32),
              _tensor(grpc, "top_p", req.top_p, "FP32", np.float32)]
    if req.messages is not None:
        raw = json.dumps(req.messages, ensure_ascii=False).encode()
        inputs.append(_tensor(grpc, "chat_messages", raw, "BYTES", np.object_))
    else:
        inputs.append(_tensor(grpc, "text_input", (req.prompt or "").encode(), "BYTES", np.object_))
    if req.max_tokens is not None:
        inputs.append(_tensor(grpc, "max_tokens", req.max_tokens, "INT32", np.int32))
    if req.seed is not None:
        inputs.append(_tensor(grpc, "seed", req.seed, "INT64", np.int64))
    if req.stop:
        inputs.append(_tensor(grpc, "stop", [s.encode() for s in req.stop], "BYTES", np.object_))
    if req.tenant:
        inputs.append(_tensor(grpc, "tenant", req.tenant.encode(), "BYTES", np.object_))
    if req.response_format:
        inputs.append(_tensor(grpc, "response_format", req.response_format.encode(), "BYTES", np.object_))
    return inputs


class TritonGenerator:
    """Generations of ``model`` on the Triton at ``grpc_url`` (host:port)."""

    def __init__(self, grpc_url: str, model: str) -> None:
        import tritonclient.grpc.aio as grpc_aio

        self.model = model
        self._grpc = grpc_aio
        self._client = grpc_aio.InferenceServerClient(grpc_url)

    async def ready(self) -> bool:
        """True when Triton and the model are ready."""
        try:
            return bool(await self._client.is_server_ready()
                        and await self._client.is_model_ready(self.model))
        except Exception:  # unreachable or starting: not ready
            return False

    async def generate(self, req: EngineRequest) -> AsyncGenerator[Piece, None]:
        """Yield the pieces of one generation; raise :class:`EngineError` on a refusal."""
        inputs = build_inputs(self._grpc, req)

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": self.model, "inputs": inputs, "request_id": req.request_id}

        call = self._client.stream_infer(one_request())
        finished = False
        try:
            async for result, error in call:
                if error is not None:
                    raise engine_error(str(error.message() if hasattr(error, "message") else error))
                reason = result.as_numpy("finish_reason")[0].decode()
                piece = Piece(result.as_numpy("text_output")[0].decode("utf-8", "replace"),
                              int(result.as_numpy("prompt_tokens")[0]),
                              int(result.as_numpy("generated_tokens")[0]), reason or None)
                yield piece
                if piece.finish_reason:
                    finished = True
                    return
        finally:
            if not finished:  # the caller went away or failed: stop the engine's work
                call.cancel()
        raise EngineError("the engine ended the request without an answer", None, invalid=False)

    async def close(self) -> None:
        """Close the gRPC channel."""
        await self._client.close()
