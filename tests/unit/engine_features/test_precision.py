"""Adaptive precision: fp8 numerics on the CPU reference path and choices within the bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.precision import (
    PrecisionScheduler,
    apply_adaptive_precision,
    fp8_hardware_support,
    fp8_linear_reference,
    quantize_activation,
    quantize_weight,
    relative_error,
)
from deepserve.engine.precision.fp8 import FP8_MAX

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("block", [0, 32])
def test_fp8_weight_round_trip_stays_within_e4m3_resolution(block: int) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 80, generator=gen)
    w[3, 7] = 40.0  # one outlier: per-channel/block scales confine its damage
    q = quantize_weight(w, block)
    assert q.data.dtype == torch.float8_e4m3fn
    assert q.data.float().abs().max() <= FP8_MAX
    err = (q.dequantize() - w).abs()
    # E4M3 has 3 mantissa bits: relative rounding error <= 2^-4 of each scale group's max
    bound = (w.abs().amax(dim=1, keepdim=True) if not block else 40.0) * 2**-4
    assert bool((err <= bound + 1e-6).all())
    rows_without_outlier = [i for i in range(96) if i != 3]
    assert relative_error(q.dequantize()[rows_without_outlier], w[rows_without_outlier]) < 0.05


def test_fp8_linear_reference_matches_float_matmul_within_fp8_error() -> None:
    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(7, 64, generator=gen), torch.randn(32, 64, generator=gen), torch.randn(32)
    out = fp8_linear_reference(x, quantize_weight(w), b)
    exact = x @ w.t() + b
    assert out.shape == exact.shape
    assert 0 < relative_error(out, exact) < 0.06
    xq, xs = quantize_activation(x)
    assert xs.shape == (7, 1) and torch.allclose(xq.float() * xs, x, rtol=0.07, atol=1e-3)


def test_cpu_has_no_native_fp8_and_says_why() -> None:
    native, reason = fp8_hardware_support("cpu")
    assert not native and "reference" in reason


def _setup(path: Path) -> tuple[Transformer, PrecisionScheduler, list[torch.Tensor]]:
    model = load_transformer(path)
    model.setup_caches(2, 32)
    handle = apply_adaptive_precision(model, allow_reference_fp8=True)
    assert handle.precisions == ("fp32", "fp16", "bf16", "fp8")
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randint(3, 500, (2, 32), generator=gen) for _ in range(2)]
    scheduler = PrecisionScheduler(handle, model.model.embed_tokens, error_bound=0.007,
                                   costs={"fp8": 1.0, "bf16": 2.0, "fp16": 2.0, "fp32": 4.0})
    return model, scheduler, batches


def _forward(model: Transformer):  # type: ignore[no-untyped-def]
    def run(tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
        return model(tokens, positions, torch.arange(tokens.shape[0]))
    return run


def test_scheduler_picks_the_cheapest_precision_whose_measured_error_is_within_bound(
        tiny_model_dirs: dict[str, Path]) -> None:
    model, scheduler, batches = _setup(tiny_model_dirs["llama"])
    with torch.inference_mode():
        cal = scheduler.calibrate(_forward(model), batches)
        assert cal.error["fp32"] == 0.0
        assert cal.error["fp16"] < cal.error["bf16"] < cal.error["fp8"]  # mantissa 10 > 7 > 3
        for bound in (0.0001, 0.007, 0.5):
            scheduler.error_bound = bound
            choice = scheduler.choose(batches[0])
            assert choice.predicted_error <= bound or choice.precision == "fp32"
            cheaper = [p for p, e in choice.candidates.items()
                       if scheduler._cost(p) < scheduler._cost(choice.precision)]
            assert all(choice.candidates[p] > bound for p in cheaper)
        # the measured error of the chosen precision really is within the bound
        scheduler.error_bound = 0.007
        choice = scheduler.choose(batches[1])
        reference = _forward(model)(batches[1])
        with scheduler.handle.use(choice.precision):
            served = _forward(model)(batches[1])
        assert relative_error(served, reference) <= 0.007


def test_outlier_heavy_batches_get_a_more_precise_choice(tiny_model_dirs: dict[str, Path]) -> None:
    model, scheduler, batches = _setup(tiny_model_dirs["llama"])
    with torch.inference_mode():
        cal = scheduler.calibrate(_forward(model), batches)
        scheduler.error_bound = cal.error["fp16"] * 1.5  # fp16 passes on calibration-like input
        assert scheduler.choose(batches[0]).precision == "fp16"
        outlier = int(model.model.embed_tokens.weight.abs().amax(dim=1).argmax())
        model.model.embed_tokens.weight[outlier] *= 8.0  # this token now has 8x range
        spiky = batches[0].clone()
        spiky[0, 5] = outlier
        choice = scheduler.choose(spiky)
    assert choice.signal > cal.signal and choice.precision == "fp32"


def test_weight_copies_are_kept_per_precision_and_state_dict_names_are_unchanged(
        tiny_model_dirs: dict[str, Path]) -> None:
    model = load_transformer(tiny_model_dirs["deepseek_v3"])
    names = set(model.state_dict())
    handle = apply_adaptive_precision(model, ("fp32", "bf16", "fp8"), fp8_block=16)
    assert set(model.state_dict()) == names
    layer = handle.layers[0]
    assert set(layer.copies) == {"bf16"} and layer.fp8 is not None and layer.fp8.block == 16
    assert handle.extra_bytes > 0


def test_measured_costs_need_a_clear_win_to_leave_the_master_precision(
        tiny_model_dirs: dict[str, Path]) -> None:
    model, scheduler, batches = _setup(tiny_model_dirs["llama"])
    with torch.inference_mode():
        cal = scheduler.calibrate(_forward(model), batches)
    scheduler.costs = None  # rank by measured time
    scheduler.error_bound = 0.5  # every precision is accurate enough
    cal.seconds = {"fp32": 1.0, "fp16": 0.95, "bf16": 0.97, "fp8": 2.0}
    assert scheduler.choose(batches[0]).precision == "fp32"  # 5% faster is within noise
    cal.seconds["fp16"] = 0.5
    assert scheduler.choose(batches[0]).precision == "fp16"
