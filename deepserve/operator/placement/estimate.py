"""Memory and speed estimates for one model on one accelerator at one tensor-parallel degree.

Decode is bandwidth-bound (every step streams the weights it touches plus the KV cache),
prefill compute-bound (2 FLOPs per active parameter per token plus attention); tensor
parallelism adds two all-reduces per layer. All factors come from :mod:`.factors`.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepserve.engine.hardware import Accelerator
from deepserve.operator.placement.factors import (
    COMPUTE_PRECISION,
    DEFAULT_FACTORS,
    KV_BYTES,
    WEIGHT_BYTES,
    EfficiencyFactors,
)
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


def memory_per_gpu_bytes(
    shape: ModelShape, precision: str, tp: int, work: Workload,
    factors: EfficiencyFactors = DEFAULT_FACTORS,
) -> float:
    """Bytes one GPU needs: weight shard + KV cache + activation workspace + runtime overhead."""
    weights = shape.total_params * WEIGHT_BYTES[precision] / tp
    kv = work.concurrency * work.context_length * shape.kv_bytes_per_token(KV_BYTES[precision], tp)
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
    factors: EfficiencyFactors = DEFAULT_FACTORS,
) -> LoadTerms:
    """Bytes and FLOPs per GPU for one decode step and one prefill (shared by all devices)."""
    wbytes = WEIGHT_BYTES[precision]
    kv_token = shape.kv_bytes_per_token(KV_BYTES[precision], tp)
    batch, prompt, gen = work.concurrency, work.prompt_tokens, work.generated_tokens
    avg_ctx = prompt + gen / 2.0  # decode sees sequences at their average length
    # causal attention costs about half of the full prompt x prompt score matrix
    attn_flops = 2.0 * shape.layers * prompt * prompt * shape.heads * shape.head_dim
    ring = 2.0 * (tp - 1) / tp * shape.hidden_size * 2  # bf16 activations, ring all-reduce
    return LoadTerms(
        memory_bytes=memory_per_gpu_bytes(shape, precision, tp, work, factors),
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
    t = terms or load_terms(shape, precision, tp, work, factors)
    flops = acc.peak_tflops(COMPUTE_PRECISION[precision]) * 1e12
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
