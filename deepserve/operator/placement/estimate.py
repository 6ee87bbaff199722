"""Memory and speed estimates for one model on one accelerator at one tensor-parallel degree.

``precision`` is the engine's precision policy (:data:`deepserve.engine.contract.POLICIES`):
weights are budgeted with every copy the engine keeps under it (``auto`` and ``fp8`` hold the
bf16 master plus fp8 copies), the KV cache in the master dtype.

Decode is bandwidth-bound (every step streams the weights it touches plus the KV cache),
prefill compute-bound (2 FLOPs per active parameter per token plus attention); tensor
parallelism adds two all-reduces per layer. All factors come from :mod:`.factors`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from deepserve.engine.contract.memory import resident_weight_bytes
from deepserve.engine.contract.precision import (
    ELEMENT_BYTES,
    compute_precision,
    master_precision,
)
from deepserve.engine.hardware import Accelerator
from deepserve.operator.placement.factors import DEFAULT_FACTORS, EfficiencyFactors
from deepserve.operator.placement.shape import ModelShape

GIB = float(2**30)


@dataclass(frozen=True)
class Workload:
    """What one replica serves: concurrent sequences and tokens per request."""

    concurrency: int
    prompt_tokens: int
    generated_tokens: int

    @property
    def context_length(self) -> int:
        """Longest sequence the KV cache must hold."""
        return self.prompt_tokens + self.generated_tokens


@dataclass(frozen=True)
class Estimate:
    """Estimated memory and speed of one replica (``tensor_parallel`` GPUs)."""

    memory_gib_per_gpu: float
    usable_gib_per_gpu: float
    decode_step_s: float
    prefill_s: float
    replica_tokens_per_s: float

    @property
    def fits(self) -> bool:
        """True when the per-GPU need fits the usable device memory."""
        return self.memory_gib_per_gpu <= self.usable_gib_per_gpu

    @property
    def per_request_tokens_per_s(self) -> float:
        """Decode speed one request sees at full concurrency."""
        return 1.0 / self.decode_step_s


def engine_fp8_native(acc: Accelerator) -> bool:
    """Whether the engine keeps fp8 copies under ``auto`` on ``acc`` (knowledge-base fp8 rate)."""
    return acc.supports("fp8")


def weight_bytes_per_gpu(shape: ModelShape, precision: str, tp: int, fp8_native: bool,
                         device_type: str = "cuda") -> float:
    """Resident weight bytes one GPU of a ``tp`` group holds under the ``precision`` policy."""
    return _resident_bytes(shape, precision, fp8_native, device_type) / tp


@functools.lru_cache(maxsize=4096)
def _resident_bytes(shape: ModelShape, precision: str, fp8_native: bool, device_type: str) -> float:
    """Memoised per model: the planner asks for every (pool, TP, PP) it weighs."""
    master = master_precision(precision, device_type)
    return resident_weight_bytes(shape.param_counts(), precision, master, fp8_native)


def kv_cache_bytes_per_gpu(shape: ModelShape, precision: str, tp: int, tokens: int,
                           device_type: str = "cuda") -> float:
    """KV-cache bytes one GPU holds for ``tokens`` tokens (the engine keeps KV in the master)."""
    kv_elem = ELEMENT_BYTES[master_precision(precision, device_type)]
    return tokens * shape.kv_bytes_per_token(kv_elem, tp)


def memory_per_gpu_bytes(
    shape: ModelShape, precision: str, tp: int, work: Workload,
    factors: EfficiencyFactors = DEFAULT_FACTORS, fp8_native: bool = False,
) -> float:
    """Bytes one GPU needs: weight shard + KV cache + activation workspace + runtime overhead."""
    weights = weight_bytes_per_gpu(shape, precision, tp, fp8_native)
    kv = kv_cache_bytes_per_gpu(shape, precision, tp, work.concurrency * work.context_length)
    chunk = min(work.prompt_tokens, factors.prefill_chunk_tokens)
    activations = chunk * shape.hidden_size * factors.activation_bytes_per_hidden / tp
    return weights + kv + activations + factors.runtime_overhead_gib * GIB


@dataclass(frozen=True)
class LoadTerms:
    """Accelerator-independent work of one replica at one precision and TP degree (per GPU)."""

    memory_bytes: float
    step_bytes: float
    step_flops: float
    prefill_bytes: float
    prefill_flops: float
    step_allreduce_bytes: float
    prefill_allreduce_bytes: float


def load_terms(
    shape: ModelShape, precision: str, tp: int, work: Workload,
    factors: EfficiencyFactors = DEFAULT_FACTORS, fp8_native: bool = False,
) -> LoadTerms:
    """Bytes and FLOPs per GPU for one decode step and one prefill (shared by devices alike
    in ``fp8_native``). A step reads the copy it computes in, not every copy held."""
    master = master_precision(precision, "cuda")
    wbytes = ELEMENT_BYTES[compute_precision(precision, master)]
    kv_token = shape.kv_bytes_per_token(ELEMENT_BYTES[master], tp)
    batch, prompt, gen = work.concurrency, work.prompt_tokens, work.generated_tokens
    avg_ctx = prompt + gen / 2.0  # decode sees sequences at their average length
    # causal attention costs about half of the full prompt x prompt score matrix
    attn_flops = 2.0 * shape.layers * prompt * prompt * shape.heads * shape.head_dim
    ring = 2.0 * (tp - 1) / tp * shape.hidden_size * 2  # bf16 activations, ring all-reduce
    return LoadTerms(
        memory_bytes=memory_per_gpu_bytes(shape, precision, tp, work, factors, fp8_native),
        step_bytes=shape.weights_read_per_step(batch) * wbytes / tp + batch * avg_ctx * kv_token,
        step_flops=2.0 * shape.active_params * batch / tp,
        prefill_bytes=shape.weights_read_per_step(prompt) * wbytes / tp,
        prefill_flops=(2.0 * shape.active_params * prompt + attn_flops) / tp,
        step_allreduce_bytes=ring * batch,
        prefill_allreduce_bytes=ring * prompt,
    )


def _allreduce_s(shape: ModelShape, acc: Accelerator, tp: int, payload: float,
                 factors: EfficiencyFactors) -> float:
    """Two all-reduces per layer, each moving ``payload`` bytes per GPU."""
    if tp <= 1:
        return 0.0
    per_direction = acc.interconnect_gbs / 2 * 1e9 * factors.interconnect
    return 2 * shape.layers * (factors.allreduce_latency_s + payload / per_direction)


def estimate(
    shape: ModelShape, acc: Accelerator, precision: str, tp: int, work: Workload,
    factors: EfficiencyFactors = DEFAULT_FACTORS, terms: LoadTerms | None = None,
) -> Estimate:
    """Estimate one replica of ``shape`` on ``tp`` x ``acc`` at ``precision``.

    ``terms`` (from :func:`load_terms` with the same arguments) may be passed to reuse the
    accelerator-independent part. Raises KeyError when the accelerator lacks the precision,
    ValueError when ``tp > 1`` and the accelerator has no intra-node interconnect figure.
    """
    if tp > 1 and acc.interconnect_gbs <= 0:
        raise ValueError(f"{acc.id} has no intra-node interconnect for tensor parallelism")
    t = terms or load_terms(shape, precision, tp, work, factors, engine_fp8_native(acc))
    flops = acc.peak_tflops(compute_precision(precision, master_precision(precision, "cuda"))) * 1e12
    bandwidth = acc.bandwidth_gbs * 1e9 * factors.memory_bandwidth

    decode_step = (max(t.step_bytes / bandwidth, t.step_flops / (flops * factors.compute_decode))
                   + _allreduce_s(shape, acc, tp, t.step_allreduce_bytes, factors)
                   + factors.step_overhead_s)
    prefill = (max(t.prefill_flops / (flops * factors.compute_prefill), t.prefill_bytes / bandwidth)
               + _allreduce_s(shape, acc, tp, t.prefill_allreduce_bytes, factors))

    # Continuous batching: each slot alternates one prefill and `gen` shared decode steps.
    batch, gen = work.concurrency, work.generated_tokens
    throughput = batch * (work.prompt_tokens + gen) / (batch * prefill + gen * decode_step)
    return Estimate(
        memory_gib_per_gpu=t.memory_bytes / GIB,
        usable_gib_per_gpu=acc.memory_gib * factors.memory_utilization,
        decode_step_s=decode_step,
        prefill_s=prefill,
        replica_tokens_per_s=throughput,
    )
