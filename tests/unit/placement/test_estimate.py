"""The estimator: decode bandwidth-bound, prefill compute-bound, TP shards memory."""

from __future__ import annotations

import pytest
from placement_configs import LLAMA3_8B, LLAMA3_70B

from deepserve.engine.hardware import load_catalog
from deepserve.operator.placement import (
    DEFAULT_FACTORS,
    EfficiencyFactors,
    ModelShape,
    Workload,
    estimate,
)

pytestmark = pytest.mark.unit

CAT = load_catalog()
H100, A100 = CAT.get("nvidia-h100-sxm5-80gb"), CAT.get("nvidia-a100-sxm4-80gb")
L8B, L70B = ModelShape.from_hf_config(LLAMA3_8B), ModelShape.from_hf_config(LLAMA3_70B)


def test_single_stream_decode_is_bandwidth_bound() -> None:
    est = estimate(L8B, H100, "bf16", 1, Workload(1, 16, 16))
    weight_bytes = L8B.total_params * 2
    memory_s = weight_bytes / (H100.bandwidth_gbs * 1e9 * DEFAULT_FACTORS.memory_bandwidth)
    expected = 1.0 / (memory_s + DEFAULT_FACTORS.step_overhead_s)  # plus the runtime's step cost
    assert est.per_request_tokens_per_s == pytest.approx(expected, rel=0.05)
    fp8 = estimate(L8B, H100, "fp8", 1, Workload(1, 16, 16))
    assert fp8.per_request_tokens_per_s > 1.6 * est.per_request_tokens_per_s  # half the bytes


def test_long_prefill_is_compute_bound() -> None:
    work = Workload(1, 4096, 1)
    est = estimate(L8B, H100, "bf16", 1, work)
    flops = 2 * L8B.active_params * 4096 + 2 * L8B.layers * 4096**2 * L8B.heads * L8B.head_dim
    expected = flops / (H100.tflops["bf16"] * 1e12 * DEFAULT_FACTORS.compute_prefill)
    assert est.prefill_s == pytest.approx(expected, rel=0.01)
    assert estimate(L8B, A100, "bf16", 1, work).prefill_s > 2.5 * est.prefill_s


def test_tensor_parallel_shards_memory_and_speeds_decode() -> None:
    work = Workload(16, 2048, 2048)
    tp2, tp8 = (estimate(L70B, H100, "bf16", t, work) for t in (2, 8))
    assert tp8.memory_gib_per_gpu < tp2.memory_gib_per_gpu / 3
    assert tp8.per_request_tokens_per_s > 2 * tp2.per_request_tokens_per_s
    assert not estimate(L70B, H100, "bf16", 1, work).fits and not tp2.fits  # KV pushes it over
    assert estimate(L70B, H100, "bf16", 4, work).fits


def test_kv_cache_grows_with_concurrency_and_context() -> None:
    small = estimate(L8B, H100, "bf16", 1, Workload(1, 1024, 1024)).memory_gib_per_gpu
    big = estimate(L8B, H100, "bf16", 1, Workload(32, 4096, 4096)).memory_gib_per_gpu
    kv_gib = 32 * 8192 * L8B.kv_bytes_per_token(2) / 2**30  # 32 GiB for 32 x 8k tokens
    assert big - small == pytest.approx(kv_gib - 2048 * L8B.kv_bytes_per_token(2) / 2**30, rel=0.02)


def test_factors_live_in_one_place_and_change_results() -> None:
    slow = EfficiencyFactors(memory_bandwidth=0.4)
    base = estimate(L8B, H100, "bf16", 1, Workload(1, 16, 16))
    halved = estimate(L8B, H100, "bf16", 1, Workload(1, 16, 16), slow)
    assert halved.per_request_tokens_per_s < 0.6 * base.per_request_tokens_per_s


def test_unsupported_precision_and_missing_interconnect_raise() -> None:
    with pytest.raises(KeyError):
        estimate(L8B, A100, "fp8", 1, Workload(1, 16, 16))
    with pytest.raises(ValueError, match="interconnect"):
        estimate(L8B, CAT.get("nvidia-jetson-agx-orin-64gb"), "bf16", 2, Workload(1, 16, 16))
