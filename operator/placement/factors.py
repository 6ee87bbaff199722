"""Every efficiency factor and overhead the planner assumes, in one place.

Peak figures from data sheets are never reached; these factors turn them into the rates a
well-tuned serving engine sees. They are first-principles defaults (typical of published
vLLM/TensorRT-LLM measurements on H100/A100) and are meant to be recalibrated from our own
GPU benchmarks: change them here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EfficiencyFactors:
    """Tunable factors (fractions of peak, bytes, seconds)."""

    memory_bandwidth: float = 0.80
    """Fraction of peak memory bandwidth reached by decode (weight + KV streaming)."""
    compute_prefill: float = 0.55
    """Fraction of dense peak tensor TFLOPS reached by prefill GEMMs."""
    compute_decode: float = 0.35
    """Fraction of peak reached by decode GEMMs when a large batch makes them compute-bound."""
    interconnect: float = 0.70
    """Fraction of per-direction intra-node bandwidth reached by all-reduce."""
    allreduce_latency_s: float = 8e-6
    """Fixed latency of one all-reduce (NCCL over NVLink/PCIe)."""
    step_overhead_s: float = 3e-4
    """Per decode step overhead (scheduling, sampling, launch) with CUDA graphs."""
    memory_utilization: float = 0.90
    """Fraction of device memory the engine may claim (the rest: driver, fragmentation)."""
    runtime_overhead_gib: float = 1.5
    """Per-GPU memory for the CUDA/ROCm context, communication buffers and workspaces."""
    prefill_chunk_tokens: int = 2048
    """Tokens per prefill chunk; sizes the activation workspace."""
    activation_bytes_per_hidden: int = 24
    """Activation bytes per token per hidden unit during a prefill chunk (bf16, fused MLP)."""


DEFAULT_FACTORS = EfficiencyFactors()

WEIGHT_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
"""Bytes per weight for each serving precision."""

KV_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 2.0}
"""Bytes per KV-cache element; the engine keeps KV in 16 bits under an fp8 weight policy."""

COMPUTE_PRECISION: dict[str, str] = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}
"""Which catalog throughput column each serving precision runs at."""

AUTO_PRECISION_ORDER: tuple[str, ...] = ("bf16", "fp16", "fp32")
""""auto" serves at the first of these the device supports (fp8 only when asked for)."""
