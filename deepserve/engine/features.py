"""Engine features switched on from :class:`EngineOptions`: HAG, APS, prefix cache, TP.

:func:`install_features` applies each technique to a loaded model from outside its code
and returns an :class:`EngineFeatures` the runtime calls at three points: choosing a
request's precision at admission, running a forward pass in a precision, and
restoring/storing prompt prefixes around prefill. :meth:`EngineFeatures.stats` exposes
every counter (KV entries read, prefix hits, requests served per precision).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepserve.engine.contract.adapters import ADAPTER_NAME_MATCH
from deepserve.engine.contract.precision import MANTISSA_BITS, master_precision, weight_copies
from deepserve.engine.lora import AdapterPool, install_adapters
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.options import EngineOptions
from deepserve.engine.precision import (
    AdaptivePrecisionHandle,
    PrecisionScheduler,
    apply_adaptive_precision,
    fp8_hardware_support,
)
from deepserve.engine.precision.adaptive import DTYPES, PRECISION_OF
from deepserve.engine.prefix_cache import PrefixCache
from deepserve.engine.sampling import InvalidRequestError
from deepserve.engine.sparse import (
    SparseAttentionHandle,
    apply_sparse_attention,
    load_indexer_weights,
)
from deepserve.engine.sparse.distill import distill_indexers
from deepserve.engine.tiny import corpus_text

log = logging.getLogger(__name__)

MIB = 2**20


def master_dtype(options: EngineOptions, device: torch.device) -> torch.dtype:
    """The dtype weights are loaded in: the fixed precision, or the top one APS may use."""
    return DTYPES[master_precision(options.precision, device.type)]


@dataclass
class EngineFeatures:
    """The part-2 techniques installed on one model (each None when switched off)."""

    precision: str  # fixed precision, or the master one when a scheduler chooses
    sparse: SparseAttentionHandle | None = None
    prefix_cache: PrefixCache | None = None
    precision_handle: AdaptivePrecisionHandle | None = None
    scheduler: PrecisionScheduler | None = None
    tensor_parallel: int = 1
    adapters: AdapterPool | None = None  # LoRA adapters (deepserve.engine.lora)

    def check_adapter(self, name: str) -> None:
        """Raise :class:`InvalidRequestError` (field ``adapter``) unless ``name`` is served."""
        if self.adapters is not None and self.adapters.known(name):
            return
        shown = name if ADAPTER_NAME_MATCH(name) else repr(name)[:80]
        served = ", ".join(sorted(self.adapters.adapters)) if self.adapters else ""
        raise InvalidRequestError("adapter", f"unknown adapter {shown}; "
                                  + (f"this model serves: {served}" if served else "this model serves none"))

    def pin_adapter(self, name: str) -> int | None:
        """Pin ``name`` in the resident pool for one request (see :meth:`AdapterPool.acquire`)."""
        assert self.adapters is not None, "check_adapter() admitted it"
        return self.adapters.acquire(name)

    def release_adapter(self, slot: int) -> None:
        """Unpin a finished request's adapter slot."""
        if self.adapters is not None:
            self.adapters.release(slot)

    def bind_adapters(self, slots: Sequence[int]) -> None:
        """The pool slot of every row of the next forward pass (0: the base model)."""
        if self.adapters is not None:
            self.adapters.state.bind(slots)

    def choose_precision(self, prompt_ids: Sequence[int]) -> str:
        """Precision for a new request (the scheduler's choice, else the fixed one)."""
        if self.scheduler is None:
            return self.precision
        device = next(self.scheduler.handle.model.parameters()).device
        return self.scheduler.choose(torch.tensor(prompt_ids, device=device)).precision

    def batch_precision(self, precisions: Iterable[str]) -> str:
        """The most accurate of the requests' precisions: nobody gets less than its choice."""
        chosen = list(precisions)
        return max(chosen, key=lambda p: MANTISSA_BITS[p]) if chosen else self.precision

    @contextlib.contextmanager
    def compute(self, precision: str) -> Iterator[None]:
        """Run the enclosed forward pass in ``precision``."""
        if self.precision_handle is None:
            yield
            return
        with self.precision_handle.use(precision):
            yield

    def record_served(self, precision: str) -> None:
        """Count one finished request served in ``precision``."""
        if self.scheduler is not None:
            self.scheduler.record(precision)

    def stats(self) -> dict[str, Any]:
        """Counters of every installed technique."""
        out: dict[str, Any] = {"precision": self.precision, "tensor_parallel": self.tensor_parallel}
        if self.sparse is not None:
            out["sparse_attention"] = self.sparse.stats()
        if self.prefix_cache is not None:
            out["prefix_cache"] = self.prefix_cache.as_dict()
        if self.scheduler is not None:
            out["adaptive_precision"] = self.scheduler.stats()
        if self.adapters is not None:
            out["adapters"] = self.adapters.as_dict()
        return out


def _calibration_batches(tokenize: Any, length: int = 64, count: int = 2) -> list[torch.Tensor]:
    ids = tokenize(corpus_text())
    length = max(8, min(length, len(ids) // count))
    return [torch.tensor(ids[i * length:(i + 1) * length])[None] for i in range(count)]


def _forward(model: Transformer) -> Any:
    def run(tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(model.lm_head.weight.device)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        return model(tokens, positions, torch.arange(tokens.shape[0], device=tokens.device))
    return run


def _install_precision(model: Transformer, options: EngineOptions, features: EngineFeatures,
                       tokenize: Any) -> None:
    device = model.lm_head.weight.device
    if options.precision == "fp8":
        native, reason = fp8_hardware_support(str(device))
        # the copies the planner budgets (contract.precision.weight_copies): master + fp8
        handle = apply_adaptive_precision(model, weight_copies("fp8", features.precision, native),
                                          allow_reference_fp8=True)
        handle.state.current = "fp8"
        features.precision_handle, features.precision = handle, "fp8"
        log.info("fp8 weights: %s", reason if native else f"{reason} (slow, for correctness)")
        return
    handle = apply_adaptive_precision(model)
    if len(handle.precisions) == 1:
        return
    scheduler = PrecisionScheduler(handle, model.model.embed_tokens, options.error_bound)
    # on the model's device: the scheduler embeds them for its outlier signal (a CPU index
    # into CUDA embeddings failed every GPU build with precision auto where fp8 is native)
    batches = [b.to(device) for b in _calibration_batches(tokenize)]
    model.setup_caches(1, batches[0].shape[1])
    with torch.inference_mode():
        scheduler.calibrate(_forward(model), batches)
    features.precision_handle, features.scheduler = handle, scheduler


def _install_sparse(model: Transformer, options: EngineOptions, tokenize: Any) -> SparseAttentionHandle:
    from deepserve.engine.checkpoint import read_config

    loaded = load_indexer_weights(model, options.model_dir, read_config(options.model_dir))
    if not loaded:
        # a dense checkpoint: a short distillation against its own attention (bounded time)
        ids = tokenize(corpus_text())
        window = min(256, max(16, len(ids) // 4))
        batches = [torch.tensor(ids[i:i + window], device=model.lm_head.weight.device)[None]
                   for i in range(0, len(ids) - window, window // 2)][:32]
        report = distill_indexers(model, batches, max_seconds=30.0)
        log.warning("no indexer weights in %s: distilled them for %.1fs (KL %.3f -> %.3f); "
                    "ship trained indexers for real use", options.model_dir, report.seconds,
                    report.first_kl, report.last_kl)
    return apply_sparse_attention(model, options.sparse_attention)


def install_features(model: Transformer, options: EngineOptions, tokenize: Any) -> EngineFeatures:
    """Apply tensor parallelism, fused projections, adaptive precision, sparse attention and
    the prefix cache.

    ``tokenize(text) -> list[int]`` supplies calibration/distillation text. Tensor
    parallelism needs ``torch.distributed`` initialised by the launcher (torchrun) with
    a world size equal to ``options.tensor_parallel``; raises ``RuntimeError`` otherwise.
    """
    dtype = model.lm_head.weight.dtype
    master = PRECISION_OF[dtype]
    features = EngineFeatures(precision=master, tensor_parallel=options.tensor_parallel)
    if options.tensor_parallel > 1:
        import torch.distributed as dist

        from deepserve.engine.parallel import apply_tensor_parallel

        if not dist.is_initialized() or dist.get_world_size() != options.tensor_parallel:
            raise RuntimeError(f"tensor_parallel={options.tensor_parallel} needs torch.distributed "
                               "initialised with that world size (e.g. torchrun)")
        apply_tensor_parallel(model)
    model.fuse_projections()  # before adaptive precision, which then wraps the fused layers
    if options.precision in ("auto", "fp8"):
        _install_precision(model, options, features, tokenize)
    if options.sparse_attention.enabled:
        features.sparse = _install_sparse(model, options, tokenize)
    if options.prefix_cache_mib or options.host_cache_mib:
        features.prefix_cache = PrefixCache(
            model, options.prefix_cache_mib * MIB, options.host_cache_mib * MIB,
            salt=f"{Path(options.model_dir).resolve()}:{options.served_version}")
    if options.adapters:  # last: the LoRA layers wrap whatever the projections are now
        static = options.compile and model.lm_head.weight.device.type == "cuda"
        features.adapters = install_adapters(model, options, options.max_batch_size, static)
    return features
