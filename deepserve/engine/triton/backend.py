"""The Triton Python-backend entry of a deepserve model (decoupled, streaming).

``model.py`` in the generated repository re-exports :class:`TritonPythonModel`. Each
request is validated, submitted to the :class:`InferenceEngine` (which batches it with the
others on its own thread) and answered through the request's response sender: one
response per text piece when streaming, or one at the end; the last response carries the
``TRITONSERVER_RESPONSE_COMPLETE_FINAL`` flag. Responses are built and sent by one sender
thread, in order, so the engine thread only queues them and goes on decoding (sending is
an IPC round trip to the server per response). The inputs and outputs are documented in
``docs/engine.md`` (and defined in :mod:`deepserve.engine.triton.protocol`). Custom
metrics use ``pb_utils.MetricFamily``; one usage event per request goes to the spool.

Triton Python backend API: https://github.com/triton-inference-server/python_backend
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from deepserve.engine.options import EngineOptions
from deepserve.engine.parallel.launcher import launch_replica, stop_serving_process
from deepserve.engine.runtime import GenerationChunk, InferenceEngine
from deepserve.engine.sampling import InvalidRequestError
from deepserve.engine.sources import resolve_model_dir
from deepserve.engine.triton.chat_template import MESSAGES_FIELD, ChatTemplate
from deepserve.engine.triton.load import EngineLoad
from deepserve.engine.triton.metrics import EngineMetrics
from deepserve.engine.triton.protocol import INPUTS
from deepserve.engine.triton.repository import read_options_from_config
from deepserve.engine.triton.requests import ParsedRequest, parse_request
from deepserve.engine.triton.usage_recorder import UsageRecorder

log = logging.getLogger("deepserve.engine.triton.backend")
LOAD_PERIOD_S = 0.25


class TritonPythonModel:
    """Triton's entry point: ``initialize``, ``execute`` (decoupled) and ``finalize``."""

    engine: InferenceEngine
    options: EngineOptions

    def initialize(self, args: dict[str, str]) -> None:
        """Load the model named in the config's ``engine_options`` and start the engine."""
        logging.basicConfig(level=os.environ.get("DEEPSERVE_LOG_LEVEL", "INFO"))
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("deepserve models need a decoupled transaction policy")
        self.options = read_options_from_config(config)
        self.model_name = self.options.served_model or args.get("model_name", "model")
        self.version = self.options.served_version or args.get("model_version", "1")
        # TP x PP > 1: this instance is rank 0 and starts/supervises the other ranks
        self.replica = launch_replica(self.options, stop_serving_process)
        self.engine = self.replica.engine
        self.metrics = EngineMetrics(pb_utils, self.model_name, self.version, self.engine.precision)
        self.usage = UsageRecorder.from_options(self.options, self.model_name, self.version)
        self.chat = self._chat_template()
        self.load = EngineLoad(self.engine.slots * self.engine.max_seq_len)
        self._load_stop = threading.Event()
        self._load_thread = threading.Thread(target=self._publish_load, name="deepserve-load",
                                             daemon=True)
        self._load_thread.start()
        self._outbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="deepserve-sender", daemon=True)
        self._sender.start()
        self.engine.start()
        log.info("deepserve model %s v%s ready (%s)", self.model_name, self.version, self.engine.precision)

    def execute(self, requests: list[Any]) -> None:
        """Validate and submit each request; responses are sent from the engine thread."""
        for request in requests:
            sender = request.get_response_sender()
            request_id = request.request_id() or str(uuid.uuid4())
            try:
                inputs = {
                    spec.name: (t.as_numpy() if (t := pb_utils.get_input_tensor_by_name(
                        request, spec.name)) is not None else None)
                    for spec in INPUTS
                }
                parsed = parse_request(inputs)
                self._submit(request_id, parsed, sender)
            except InvalidRequestError as exc:
                self.metrics.rejected()
                sender.send(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _chat_template(self) -> ChatTemplate | None:
        try:  # the engine has resolved the source already: this finds its local copy
            return ChatTemplate.from_model_dir(resolve_model_dir(self.options.model_dir))
        except Exception:  # chat is refused (400) rather than the model failing to load
            log.warning("no chat template: cannot read tokenizer_config.json", exc_info=True)
            return None

    def _publish_load(self) -> None:
        """Set the load gauges a few times a second (each set is an IPC call to the server)."""
        while not self._load_stop.wait(LOAD_PERIOD_S):
            self.metrics.load(self.load.snapshot())

    def _prompt(self, parsed: ParsedRequest) -> str:
        if parsed.messages is None:
            return parsed.prompt
        if self.chat is None:
            raise InvalidRequestError(MESSAGES_FIELD, "this model has no chat template")
        try:
            return self.chat.render(parsed.messages)
        except InvalidRequestError:
            raise
        except Exception as exc:  # a template error is the template's, not the caller's
            raise InvalidRequestError(MESSAGES_FIELD, f"the chat template failed: {exc}") from exc

    def _send_loop(self) -> None:
        """Build and send queued responses in order until the ``None`` sentinel."""
        while (job := self._outbox.get()) is not None:
            try:
                job()
            except Exception:  # a gone client must not stop the others' responses
                log.exception("sending a response failed")

    def _submit(self, request_id: str, parsed: ParsedRequest, sender: Any) -> None:
        pieces: list[str] = []
        prompt = self._prompt(parsed)
        key = uuid.uuid4().hex  # request ids come from clients and may repeat

        def on_chunk(chunk: GenerationChunk) -> None:  # engine thread: queue, never block
            if chunk.finished:
                self.load.finished(key)
            else:
                self.load.progressed(key, chunk.prompt_tokens, chunk.generated_tokens)
            if not chunk.finished:
                if parsed.stream:
                    self._outbox.put(lambda: sender.send(self._response(chunk, chunk.text)))
                else:
                    pieces.append(chunk.text)
                return
            text = "".join(pieces) + chunk.text
            self._outbox.put(lambda: self._finish(chunk, parsed, sender, text))

        self.load.submitted(key)
        try:
            self.engine.submit(prompt, parsed.params, request_id=request_id,
                               on_chunk=on_chunk, is_cancelled=sender.is_cancelled)
        except BaseException:
            self.load.finished(key)
            raise

    def _finish(self, chunk: GenerationChunk, parsed: ParsedRequest, sender: Any, text: str) -> None:
        final_text = chunk.text if parsed.stream else text
        try:
            if chunk.finish_reason == "error":
                sender.send(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(chunk.error or "engine error", pb_utils.TritonError.INTERNAL)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            elif chunk.finish_reason == "cancelled":
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(self._response(chunk, final_text),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            # metrics and usage are recorded even when the client is gone
            if chunk.stats is not None:
                self.metrics.observe(chunk.stats, chunk.finish_reason or "stop")
                if chunk.reused_prompt_tokens:
                    self.metrics.cache_hits(chunk.reused_prompt_tokens)
                self.usage.record(chunk, parsed.tenant, chunk.precision or self.engine.precision)

    def _response(self, chunk: GenerationChunk, text: str) -> Any:
        def tensor(name: str, value: Any, dtype: Any) -> Any:
            return pb_utils.Tensor(name, np.array([value], dtype=dtype))

        return pb_utils.InferenceResponse(output_tensors=[
            tensor("text_output", text.encode("utf-8"), np.object_),
            tensor("prompt_tokens", chunk.prompt_tokens, np.int32),
            tensor("generated_tokens", chunk.generated_tokens, np.int32),
            tensor("finish_reason", (chunk.finish_reason or "").encode(), np.object_),
            tensor("precision", (chunk.precision or self.engine.precision).encode(), np.object_),
        ])

    def finalize(self) -> None:
        """Cancel pending requests, stop the engine and flush usage (graceful drain)."""
        self._load_stop.set()
        self.engine.stop(cancel_pending=True)
        self.replica.close()  # the other ranks, after the engine's last step
        self._outbox.put(None)  # after the engine's last chunk: everything queued is sent
        self._sender.join(timeout=30)
        self.usage.close()
