"""Known placement cases from the issue, strategies, SLOs, capacity and reasons."""

from __future__ import annotations

import pytest
from placement_configs import DEEPSEEK_V3, LLAMA3_3B, LLAMA3_8B, LLAMA3_70B

from deepserve.operator.placement import (
    ModelShape,
    PlacementRequest,
    PoolOffer,
    plan_placement,
)

pytestmark = pytest.mark.unit

A100 = PoolOffer("a100", "nvidia-a100-sxm4-80gb", 8, 2, 16, 1.80, max_nodes=2)
H100 = PoolOffer("h100", "nvidia-h100-sxm5-80gb", 8, 2, 16, 2.99, max_nodes=2)
L4 = PoolOffer("l4", "nvidia-l4", 1, 4, 4, 0.80, max_nodes=4)
L8B, L70B = ModelShape.from_hf_config(LLAMA3_8B), ModelShape.from_hf_config(LLAMA3_70B)
L3B = ModelShape.from_hf_config(LLAMA3_3B)


def test_70b_bf16_does_not_fit_one_80gb_gpu_and_gets_tp_at_least_2() -> None:
    plan = plan_placement(L70B, [A100, H100], PlacementRequest(precision="bf16"))
    assert plan.chosen is not None and plan.chosen.tensor_parallel >= 2
    tp1 = [c for c in plan.ranked if c.tensor_parallel == 1]
    assert tp1 and all(c.rejected_code == "NoPoolFits" for c in tp1)
    assert "GiB per GPU at TP=1" in (tp1[0].rejected_reason or "")


def test_fp8_budgets_the_bf16_master_and_the_fp8_copy_the_engine_keeps() -> None:
    # the engine loads bf16 and adds fp8 copies of the decoder's linear weights (#17.1)
    l8 = plan_placement(L8B, [L4], PlacementRequest(precision="fp8"))
    assert l8.chosen is None and l8.ranked[0].rejected_code == "NoPoolFits"
    bf16 = plan_placement(L8B, [H100], PlacementRequest(precision="bf16", gpus_per_replica=1))
    fp8 = plan_placement(L8B, [H100], PlacementRequest(precision="fp8", gpus_per_replica=1))
    assert bf16.chosen and fp8.chosen
    assert fp8.chosen.memory_gib_per_gpu > bf16.chosen.memory_gib_per_gpu + 6.0
    plan = plan_placement(L3B, [L4], PlacementRequest(precision="fp8"))
    assert plan.chosen is not None and plan.chosen.memory_gib_per_gpu < 24 * 0.9


def test_auto_stays_auto_where_bf16_runs_and_is_fixed_fp16_elsewhere() -> None:
    t4 = PoolOffer("t4", "nvidia-tesla-t4", 1, 4, 4, 0.35, max_nodes=4)
    assert plan_placement(L3B, [L4], PlacementRequest()).chosen.precision == "auto"  # type: ignore[union-attr]
    assert plan_placement(L3B, [t4], PlacementRequest()).chosen.precision == "fp16"  # type: ignore[union-attr]


def test_fp8_is_never_placed_on_hardware_without_fp8() -> None:
    plan = plan_placement(L3B, [A100, L4], PlacementRequest(precision="fp8"))
    assert plan.chosen is not None and plan.chosen.pool == "l4"
    a100 = [c for c in plan.ranked if c.pool == "a100"]
    assert [c.rejected_code for c in a100] == ["PrecisionUnsupported"]
    only_a100 = plan_placement(L3B, [A100], PlacementRequest(precision="fp8"))
    assert only_a100.chosen is None and only_a100.reason.startswith("PrecisionUnsupported")


def test_cost_strategy_picks_the_cheaper_pool_when_both_meet_the_slo() -> None:
    cheap = PoolOffer("h100-spot", "nvidia-h100-sxm5-80gb", 8, 1, 8, 1.50, max_nodes=1)
    request = PlacementRequest(strategy="cost", slo_min_tokens_per_s=20, slo_max_ttft_ms=2000)
    plan = plan_placement(L70B, [H100, cheap], request)
    assert plan.chosen is not None and plan.chosen.pool == "h100-spot"
    best_h100 = min(c.cost_per_million_tokens or 0 for c in plan.ranked
                    if c.pool == "h100" and c.feasible)
    assert plan.chosen.cost_per_million_tokens is not None
    assert plan.chosen.cost_per_million_tokens < best_h100


def test_slo_rejects_slow_options_and_says_so() -> None:
    plan = plan_placement(L3B, [L4, H100], PlacementRequest(slo_min_tokens_per_s=60))
    assert plan.chosen is not None and plan.chosen.pool == "h100"
    l4 = next(c for c in plan.ranked if c.pool == "l4")
    assert l4.rejected_code == "SLONotMet" and "tokens/s per request" in (l4.rejected_reason or "")


def test_latency_and_throughput_strategies_prefer_faster_options() -> None:
    lat = plan_placement(L70B, [A100, H100], PlacementRequest(strategy="latency"))
    thr = plan_placement(L70B, [A100, H100], PlacementRequest(strategy="throughput"))
    cost = plan_placement(L70B, [A100, H100], PlacementRequest(strategy="cost"))
    assert lat.chosen and thr.chosen and cost.chosen
    assert lat.chosen.request_latency_ms <= cost.chosen.request_latency_ms
    assert thr.chosen.replica_tokens_per_s >= cost.chosen.replica_tokens_per_s
    feasible = [c for c in lat.ranked if c.feasible]
    assert feasible == sorted(feasible, key=lambda c: c.request_latency_ms)


def test_no_capacity_is_reported_and_scale_from_zero_pools_count() -> None:
    full = PoolOffer("h100", "nvidia-h100-sxm5-80gb", 8, 1, 2, 2.99, max_nodes=1)
    plan = plan_placement(L70B, [full], PlacementRequest())
    assert plan.chosen is None and plan.reason.startswith("NoCapacity")
    empty_but_scalable = PoolOffer("h100-auto", "nvidia-h100-sxm5-80gb", 8, 0, 0, 2.99,
                                   max_nodes=2, source="GPUNodePool")
    assert plan_placement(L70B, [empty_but_scalable], PlacementRequest()).chosen is not None


def test_replicas_must_fit_whole_nodes_when_per_node_free_gpus_are_known() -> None:
    fragmented = PoolOffer("h100", "nvidia-h100-sxm5-80gb", 8, 2, 8, 2.99, max_nodes=2,
                           node_free_gpus=(4, 4))
    plan = plan_placement(L70B, [fragmented], PlacementRequest(gpus_per_replica=8))
    assert plan.chosen is None and "room for 0 of 1" in plan.reason


def test_no_pool_fits_reason_names_need_offer_and_tp_limit() -> None:
    plan = plan_placement(L70B, [A100, L4], PlacementRequest(max_tp=1))
    assert plan.chosen is None
    assert plan.reason.startswith("NoPoolFits: weights alone need 131 GiB")
    assert "largest pool a100 offers 8x80 GiB but TP is limited to 1" in plan.reason


def test_allowed_pools_unknown_accelerators_and_fixed_tp() -> None:
    ghost = PoolOffer("ghost", "nvidia-imaginary", 8, 1, 8, 0.01)
    request = PlacementRequest(allowed_pools=("h100", "ghost"), gpus_per_replica=4)
    plan = plan_placement(L70B, [A100, H100, ghost], request)
    assert plan.chosen is not None
    assert (plan.chosen.pool, plan.chosen.tensor_parallel) == ("h100", 4)
    codes = {c.pool: c.rejected_code for c in plan.ranked if not c.feasible}
    assert codes == {"a100": "PoolNotAllowed", "ghost": "UnknownAccelerator"}


def test_deepseek_v3_fits_no_single_8x_h200_node_in_either_precision() -> None:
    # 671B weights: bf16 needs 1.25 TiB; fp8 keeps the bf16 master too (3 bytes a weight)
    h200 = PoolOffer("h200", "nvidia-h200-sxm-141gb", 8, 1, 8, 3.50, max_nodes=1)
    shape = ModelShape.from_hf_config(DEEPSEEK_V3)
    for precision in ("fp8", "bf16"):
        plan = plan_placement(shape, [h200], PlacementRequest(precision=precision, concurrency=4))
        assert plan.chosen is None and plan.reason.startswith("NoPoolFits")


def test_request_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="strategy"):
        PlacementRequest(strategy="cheapest")
    with pytest.raises(ValueError, match="concurrency"):
        PlacementRequest(concurrency=0)
