"""Every efficiency factor and overhead the planner assumes, in one place.

Peak figures from data sheets are never reached; these factors turn them into the rates a
well-tuned serving engine sees. ``memory_bandwidth``, ``compute_prefill`` and
``step_overhead_s`` are calibrated from our engine on one NVIDIA H200 (docs/performance.md,
2026-11-29; data-sheet peaks 4.8 TB/s HBM3e and 989 dense bf16 TFLOP/s); the others are
first-principles defaults typical of published vLLM/TensorRT-LLM measurements. Change them
here and only here. Bytes per weight, KV element and precision names come from the serving
contract (:mod:`deepserve.engine.contract`), shared with the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EfficiencyFactors:
    """Tunable factors (fractions of peak, bytes, seconds)."""

    memory_bandwidth: float = 0.72
    """Fraction of peak memory bandwidth reached by decode (weight + KV streaming). H200,
    Llama-3.1-8B shape, compiled decode: 3.4 TB/s of 4.8 at batch 64 and at 256 sequences of
    ~1,500 tokens (3.8 TB/s at batch 1)."""
    compute_prefill: float = 0.51
    """Fraction of dense peak tensor TFLOPS reached by prefill GEMMs. H200, 8B shape, 16
    prompts of 1,000 tokens per forward: 29-33k tokens/s = 470-530 TFLOP/s of 989."""
    compute_decode: float = 0.35
    """Fraction of peak reached by decode GEMMs when a large batch makes them compute-bound."""
    interconnect: float = 0.70
    """Fraction of per-direction intra-node bandwidth reached by all-reduce."""
    allreduce_latency_s: float = 8e-6
    """Fixed latency of one all-reduce (NCCL over NVLink/PCIe)."""
    step_overhead_s: float = 9e-4
    """Per decode step overhead (scheduling, sampling, detokenizing, streaming) with CUDA
    graphs: our runtime's time per token minus the step's memory time, ~1B model at batch 1
    on the H200 (1.6 ms/token in-process, 1.8 ms served through Triton)."""
    memory_utilization: float = 0.90
    """Fraction of device memory the engine may claim (the rest: driver, fragmentation)."""
    runtime_overhead_gib: float = 1.5
    """Per-GPU memory for the CUDA/ROCm context, communication buffers and workspaces."""
    prefill_chunk_tokens: int = 2048
    """Tokens per prefill chunk; sizes the activation workspace."""
    activation_bytes_per_hidden: int = 24
    """Activation bytes per token per hidden unit during a prefill chunk (bf16, fused MLP)."""


DEFAULT_FACTORS = EfficiencyFactors()
