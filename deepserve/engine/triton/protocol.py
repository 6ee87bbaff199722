"""The request/response contract of a deepserve model served by Triton (no torch).

One table, :data:`INPUTS` and :data:`OUTPUTS`, feeds both ``config.pbtxt`` and the
backend's request parsing, so the documented contract and the code cannot drift.
Tensor data types follow the Triton model configuration spec
(https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_configuration.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of the served model."""

    name: str
    data_type: str  # Triton TYPE_* name
    dims: tuple[int, ...]
    optional: bool
    description: str


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_input", "TYPE_STRING", (1,), True, "prompt text (UTF-8); this or chat_messages"),
    TensorSpec("chat_messages", "TYPE_STRING", (1,), True,
               "JSON list of {role, content}, rendered with the model's chat template"),
    TensorSpec("max_tokens", "TYPE_INT32", (1,), True, "most tokens to generate (default 16)"),
    TensorSpec("temperature", "TYPE_FP32", (1,), True, "0 = greedy (default), else sampling"),
    TensorSpec("top_k", "TYPE_INT32", (1,), True, "keep the k most likely tokens; 0 = off"),
    TensorSpec("top_p", "TYPE_FP32", (1,), True, "nucleus sampling mass in (0, 1]; 1 = off"),
    TensorSpec("seed", "TYPE_INT64", (1,), True, "sampling seed; same seed, same text"),
    TensorSpec("stop", "TYPE_STRING", (-1,), True, "stop strings; not included in the output"),
    TensorSpec("stream", "TYPE_BOOL", (1,), True, "true (default): one response per token"),
    TensorSpec("tenant", "TYPE_STRING", (1,), True, "caller's tenant tag (untrusted, for usage)"),
    TensorSpec("response_format", "TYPE_STRING", (1,), True,
               "OpenAI response_format JSON: json_object, json_schema or regex (constrained output)"),
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_output", "TYPE_STRING", (1,), False,
               "streaming: the new text of this response; otherwise the whole completion"),
    TensorSpec("prompt_tokens", "TYPE_INT32", (1,), False, "tokens in the prompt"),
    TensorSpec("generated_tokens", "TYPE_INT32", (1,), False, "tokens generated so far"),
    TensorSpec("finish_reason", "TYPE_STRING", (1,), False,
               "empty while streaming; then 'stop', 'length' or 'cancelled'"),
    TensorSpec("precision", "TYPE_STRING", (1,), False, "precision the request ran in"),
)

DEFAULT_MAX_TOKENS = 16
SEED_MAX = 2**63 - 1
