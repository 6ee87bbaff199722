"""Engine options: the architecture-independent knobs of one served model.

This module imports no torch: the operator renders these options into the Triton model
repository (a ConfigMap) and the engine reads them back inside the Triton Python backend.
Options are validated on construction; an invalid value raises
:class:`EngineOptionsError` whose message starts with the field's name.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from deepserve.engine.contract.adapters import (
    ADAPTER_NAME_MATCH,
    ADAPTER_NAME_PATTERN,
    MAX_ADAPTER_RANK,
    MAX_ADAPTERS,
)

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "fp8")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class EngineOptionsError(ValueError):
    """An engine option is invalid; ``field`` names it (dotted for nested options)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _require_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineOptionsError(name, f"must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise EngineOptionsError(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise EngineOptionsError(name, f"must be <= {maximum}, got {value}")


def _require_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise EngineOptionsError(name, f"must be a string, got {type(value).__name__}")


@dataclass(frozen=True)
class SparseAttentionOptions:
    """Sparse attention with a top-k indexer (deepserve.engine.sparse).

    ``top_k`` tokens are selected per query by the indexer, plus ``sinks`` first tokens
    and a ``local_window`` of the most recent tokens which are always attended.
    """

    enabled: bool = False
    top_k: int = 2048
    sinks: int = 4
    local_window: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise EngineOptionsError("sparse_attention.enabled", "must be a boolean")
        _require_int("sparse_attention.top_k", self.top_k, 1)
        _require_int("sparse_attention.sinks", self.sinks, 0)
        _require_int("sparse_attention.local_window", self.local_window, 0)


@dataclass(frozen=True)
class AdapterOptions:
    """One LoRA adapter the engine may load on top of the base model (deepserve.engine.lora).

    ``source`` is a local directory (a ``pvc://`` mount or a fetched ``hf://``/``s3://``
    copy, as the operator renders it) or ``builtin://tiny-lora-<seed>``; ``rank`` 0 means
    "whatever the adapter's ``adapter_config.json`` says", else the adapter must have it.
    """

    name: str
    source: str
    rank: int = 0

    def __post_init__(self) -> None:
        _require_str("adapters.name", self.name)
        if not ADAPTER_NAME_MATCH(self.name):
            raise EngineOptionsError("adapters.name", f"must match {ADAPTER_NAME_PATTERN}, got {self.name!r}")
        _require_str(f"adapters[{self.name}].source", self.source)
        if not self.source:
            raise EngineOptionsError(f"adapters[{self.name}].source", "must not be empty")
        _require_int(f"adapters[{self.name}].rank", self.rank, 0, MAX_ADAPTER_RANK)


def _adapter(data: Any) -> AdapterOptions:
    if isinstance(data, AdapterOptions):
        return data
    if not isinstance(data, dict):
        raise EngineOptionsError("adapters", "each adapter must be an object")
    known = {f.name for f in dataclasses.fields(AdapterOptions)}
    for key in data:
        if key not in known:
            raise EngineOptionsError(f"adapters.{key}", "unknown engine option")
    for key in ("name", "source"):
        if key not in data:
            raise EngineOptionsError(f"adapters.{key}", "is required")
    return AdapterOptions(**data)


@dataclass(frozen=True)
class EngineOptions:
    """Everything the engine needs to serve one model, independent of its architecture.

    ``kv_cache_tokens`` is the total number of token slots in the static KV cache across
    all concurrent sequences; 0 means ``max_batch_size * max_sequence_tokens``.
    ``precision`` "auto" lets the precision scheduler pick within ``error_bound``.
    Identity fields (``served_model`` ... ``billing_account``) label metrics and usage events.
    """

    model_dir: str
    max_batch_size: int = 8
    max_input_tokens: int = 2048
    max_new_tokens_limit: int = 1024
    kv_cache_tokens: int = 0
    precision: str = "auto"
    error_bound: float = 0.007
    sparse_attention: SparseAttentionOptions = field(default_factory=SparseAttentionOptions)
    prefix_cache_mib: int = 0
    host_cache_mib: int = 0
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    max_queue_delay_us: int = 100
    usage_spool_dir: str = ""
    usage_endpoint: str = ""
    device: str = "auto"
    compile: bool = False
    kv_cache_dtype: str = "auto"  # "fp8": E4M3 KV cache, half the bytes (issue #19.3)
    kv_page_tokens: int = 0  # > 0: paged KV cache with blocks of this many tokens (issue #19.3)
    prefill_chunk_tokens: int = 0  # > 0: prompt tokens prefilled per step between decodes (#19.4)
    speculative_model: str = ""  # a draft model's source: speculative decoding (#19.7); "": off
    speculative_tokens: int = 4  # draft tokens proposed per step
    adapters: tuple[AdapterOptions, ...] = ()  # LoRA adapters (issue #19.5)
    max_resident_adapters: int = 4  # adapters held on the device at once (LRU beyond)
    max_adapter_rank: int = 16  # the resident pool's rank; larger adapters are refused
    served_model: str = ""
    served_version: str = "1"
    namespace: str = ""
    billing_account: str = ""

    def __post_init__(self) -> None:
        _require_str("model_dir", self.model_dir)
        if not self.model_dir:
            raise EngineOptionsError("model_dir", "must not be empty")
        _require_int("max_batch_size", self.max_batch_size, 1, 4096)
        _require_int("max_input_tokens", self.max_input_tokens, 1)
        _require_int("max_new_tokens_limit", self.max_new_tokens_limit, 1)
        _require_int("kv_cache_tokens", self.kv_cache_tokens, 0)
        if 0 < self.kv_cache_tokens < self.max_sequence_tokens:
            raise EngineOptionsError(
                "kv_cache_tokens",
                f"must be 0 (auto) or at least max_input_tokens + max_new_tokens_limit "
                f"= {self.max_sequence_tokens}, got {self.kv_cache_tokens}",
            )
        if self.precision not in PRECISIONS:
            raise EngineOptionsError("precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.error_bound, bool) or not isinstance(self.error_bound, int | float):
            raise EngineOptionsError("error_bound", "must be a number")
        if not 0.0 < float(self.error_bound) < 1.0:
            raise EngineOptionsError("error_bound", f"must be in (0, 1), got {self.error_bound}")
        if not isinstance(self.sparse_attention, SparseAttentionOptions):
            raise EngineOptionsError("sparse_attention", "must be a SparseAttentionOptions")
        _require_int("prefix_cache_mib", self.prefix_cache_mib, 0)
        _require_int("host_cache_mib", self.host_cache_mib, 0)
        # any degree that splits the heads runs (the planner may pick 3 or 6 for 48 heads)
        _require_int("tensor_parallel", self.tensor_parallel, 1, 64)
        _require_int("pipeline_parallel", self.pipeline_parallel, 1, 256)
        _require_int("max_queue_delay_us", self.max_queue_delay_us, 0)
        for name in ("usage_spool_dir", "usage_endpoint", "served_model", "served_version",
                     "namespace", "billing_account"):
            _require_str(name, getattr(self, name))
        if self.usage_endpoint and not self.usage_endpoint.startswith(("http://", "https://")):
            raise EngineOptionsError("usage_endpoint", "must be an http(s) URL or empty")
        if self.device not in DEVICES:
            raise EngineOptionsError("device", f"must be one of {DEVICES}, got {self.device!r}")
        if not isinstance(self.compile, bool):
            raise EngineOptionsError("compile", "must be a boolean")
        _require_int("kv_page_tokens", self.kv_page_tokens, 0, 4096)
        _require_int("prefill_chunk_tokens", self.prefill_chunk_tokens, 0)
        self._check_speculative()
        if self.kv_cache_dtype not in ("auto", "fp8"):
            raise EngineOptionsError("kv_cache_dtype", f"must be 'auto' or 'fp8', got {self.kv_cache_dtype!r}")
        self._check_adapters()

    def _check_adapters(self) -> None:
        if not isinstance(self.adapters, tuple) or not all(
                isinstance(a, AdapterOptions) for a in self.adapters):
            raise EngineOptionsError("adapters", "must be a tuple of AdapterOptions")
        if len(self.adapters) > MAX_ADAPTERS:
            raise EngineOptionsError("adapters", f"at most {MAX_ADAPTERS}, got {len(self.adapters)}")
        names = [a.name for a in self.adapters]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise EngineOptionsError("adapters.name", f"{duplicate!r} is listed twice")
        _require_int("max_resident_adapters", self.max_resident_adapters, 1, MAX_ADAPTERS)
        _require_int("max_adapter_rank", self.max_adapter_rank, 1, MAX_ADAPTER_RANK)
        for a in self.adapters:
            if a.rank > self.max_adapter_rank:
                raise EngineOptionsError(f"adapters[{a.name}].rank",
                                         f"{a.rank} exceeds max_adapter_rank {self.max_adapter_rank}")

    def _check_speculative(self) -> None:
        _require_str("speculative_model", self.speculative_model)
        _require_int("speculative_tokens", self.speculative_tokens, 1, 16)
        if not self.speculative_model:
            return
        refused = {"kv_page_tokens": self.kv_page_tokens > 0,
                   "sparse_attention": self.sparse_attention.enabled,
                   "tensor_parallel": self.tensor_parallel > 1,
                   "pipeline_parallel": self.pipeline_parallel > 1,
                   "compile": self.compile,
                   "adapters": bool(self.adapters)}
        for name, on in refused.items():
            if on:
                raise EngineOptionsError("speculative_model",
                                         f"speculative decoding does not run with {name} yet")

    @property
    def max_sequence_tokens(self) -> int:
        """The longest sequence one request can reach: prompt plus generated tokens."""
        return self.max_input_tokens + self.max_new_tokens_limit

    @property
    def cache_slots(self) -> int:
        """How many sequences the static KV cache holds at once."""
        if self.kv_cache_tokens == 0:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, self.kv_cache_tokens // self.max_sequence_tokens))

    def to_dict(self) -> dict[str, Any]:
        """Return the options as plain JSON-compatible data."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Serialise to a stable (sorted-key) JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineOptions:
        """Build options from plain data; unknown keys raise :class:`EngineOptionsError`."""
        if not isinstance(data, dict):
            raise EngineOptionsError("<root>", "must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise EngineOptionsError(str(key), "unknown engine option")
        if "model_dir" not in data:
            raise EngineOptionsError("model_dir", "is required")
        values = dict(data)
        sparse = values.get("sparse_attention")
        if sparse is not None and not isinstance(sparse, SparseAttentionOptions):
            if not isinstance(sparse, dict):
                raise EngineOptionsError("sparse_attention", "must be an object")
            sparse_known = {f.name for f in dataclasses.fields(SparseAttentionOptions)}
            for key in sparse:
                if key not in sparse_known:
                    raise EngineOptionsError(f"sparse_attention.{key}", "unknown engine option")
            values["sparse_attention"] = SparseAttentionOptions(**sparse)
        adapters = values.get("adapters")
        if adapters is not None:
            if not isinstance(adapters, list | tuple):
                raise EngineOptionsError("adapters", "must be a list")
            values["adapters"] = tuple(_adapter(a) for a in adapters)
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> EngineOptions:
        """Parse options written by :meth:`to_json` (or by hand)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EngineOptionsError("<root>", f"not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> EngineOptions:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)
