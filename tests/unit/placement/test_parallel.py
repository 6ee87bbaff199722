"""Replicas over several nodes: TP inside a node, PP across nodes, the communication model."""

from __future__ import annotations

import dataclasses

import pytest
from placement_configs import DEEPSEEK_V3, LLAMA3_70B

from deepserve.engine.hardware import load_catalog
from deepserve.engine.parallel.layout import check_layout
from deepserve.operator.placement import ModelShape, PlacementRequest, PoolOffer, plan_placement
from deepserve.operator.placement.estimate import Workload
from deepserve.operator.placement.parallel import (
    MultiNodeCandidate,
    communication,
    engine_can_split,
    fabrics,
    inter_node_fabric,
    intra_node_fabric,
)

pytestmark = pytest.mark.unit

LLAMA_405B = {"model_type": "llama", "hidden_size": 16384, "num_hidden_layers": 126,
              "num_attention_heads": 128, "num_key_value_heads": 8, "intermediate_size": 53248,
              "vocab_size": 128256, "max_position_embeddings": 131072}  # Llama-3.1-405B
A100 = PoolOffer("a100", "nvidia-a100-sxm4-80gb", 8, 2, 16, 1.80, max_nodes=4)
H200 = PoolOffer("h200", "nvidia-h200-sxm-141gb", 8, 1, 8, 3.50, max_nodes=4)
CATALOG = load_catalog()


def _runs(shape: ModelShape, cand: MultiNodeCandidate) -> None:
    check_layout(cand.tensor_parallel, cand.pipeline_parallel, num_layers=shape.layers,
                 attention_heads=shape.heads,
                 kv_heads=shape.heads if shape.is_mla else shape.kv_heads,
                 gpus=cand.gpus_per_replica)


def test_llama_405b_on_a100_nodes_spans_two_nodes_and_says_why() -> None:
    shape = ModelShape.from_hf_config(LLAMA_405B)
    plan = plan_placement(shape, [A100], PlacementRequest(precision="bf16"))
    best = plan.chosen
    assert isinstance(best, MultiNodeCandidate)
    assert (best.tensor_parallel, best.pipeline_parallel, best.nodes_per_replica) == (8, 2, 2)
    assert best.gpus_per_replica == 16 and best.memory_gib_per_gpu < 80 * 0.9
    assert "no single node holds a replica" in plan.reason and "PP=2 stages over 2 nodes" in plan.reason
    assert "InfiniBand HDR" in plan.reason and "of a decode step" in plan.reason
    status = best.as_status()
    assert status["pipelineParallel"] == 2 and status["nodesPerReplica"] == 2
    assert 0 < float(status["communicationShare"]) < 1  # type: ignore[arg-type]
    _runs(shape, best)
    # the single-node options stay in the plan, each with its reason
    assert any(c.rejected_code == "NoPoolFits" and c.gpus_per_replica == 8 for c in plan.ranked)


def test_deepseek_v3_gets_a_feasible_runnable_placement_over_h200_nodes() -> None:
    shape = ModelShape.from_hf_config(DEEPSEEK_V3)
    for precision in ("bf16", "fp8"):
        plan = plan_placement(shape, [H200], PlacementRequest(precision=precision, concurrency=4))
        best = plan.chosen
        assert isinstance(best, MultiNodeCandidate), plan.reason
        assert best.nodes_per_replica >= 2 and best.tensor_parallel == 8
        assert best.memory_gib_per_gpu <= 141 * 0.9
        _runs(shape, best)


def test_one_node_pools_and_tp_limits_still_refuse() -> None:
    shape = ModelShape.from_hf_config(LLAMA_405B)
    one_node = dataclasses.replace(A100, nodes=1, max_nodes=1)
    assert plan_placement(shape, [one_node], PlacementRequest()).chosen is None
    # at most two stages per node: TP=1 across nodes would be a 16-deep pipeline
    plan = plan_placement(shape, [A100], PlacementRequest(max_tp=2))
    assert plan.chosen is None and plan.reason.startswith("NoPoolFits")


def test_fewest_nodes_win_and_fixed_gpus_per_replica_is_honoured() -> None:
    shape = ModelShape.from_hf_config(LLAMA_405B)
    plan = plan_placement(shape, [A100], PlacementRequest(precision="bf16"))
    nodes = [c.nodes_per_replica for c in plan.ranked if isinstance(c, MultiNodeCandidate) and c.feasible]
    assert nodes[0] == min(nodes) and max(nodes) > 2
    fixed = plan_placement(shape, [A100], PlacementRequest(precision="bf16", gpus_per_replica=32))
    assert fixed.chosen is not None and fixed.chosen.gpus_per_replica == 32


@pytest.mark.parametrize(("heads", "kv", "layers"), [(20, 4, 3), (40, 8, 2), (24, 24, 5), (12, 1, 4)])
def test_every_produced_layout_runs(heads: int, kv: int, layers: int) -> None:
    # odd shapes: heads not divisible by 8, MQA, fewer layers than possible stages
    config = {"model_type": "llama", "hidden_size": heads * 128, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv,
              "intermediate_size": heads * 512, "vocab_size": 32000,
              "max_position_embeddings": 8192}
    shape = dataclasses.replace(ModelShape.from_hf_config(config), total_params=10**12,
                                active_params=10**12)  # too big for one node
    small = PoolOffer("a100", "nvidia-a100-sxm4-80gb", 8, 8, 64, 1.80, max_nodes=8)
    plan = plan_placement(shape, [small], PlacementRequest(precision="bf16", concurrency=1,
                                                           context_length=1024))
    produced = [c for c in plan.ranked if isinstance(c, MultiNodeCandidate)]
    for cand in produced:
        assert engine_can_split(shape, cand.tensor_parallel)
        assert cand.pipeline_parallel <= layers
        _runs(shape, cand)


def test_communication_share_grows_with_tp_and_with_crossing_nodes() -> None:
    shape = ModelShape.from_hf_config(LLAMA3_70B)
    acc = CATALOG.get("nvidia-a100-sxm4-80gb")
    work = Workload(32, 1024, 256)
    share = {(tp, pp): communication(shape, acc, "bf16", tp, pp, 8, work)[0].decode_share
             for tp, pp in [(2, 1), (4, 1), (8, 1), (16, 1), (8, 2), (4, 2)]}
    assert share[(2, 1)] < share[(4, 1)] < share[(8, 1)] < share[(16, 1)]
    assert share[(8, 2)] > share[(8, 1)]  # an InfiniBand send per token on top
    assert share[(4, 2)] < share[(8, 1)]  # the seed's direction: less TP, a pipeline stage


def test_link_data_has_sources_and_matches_the_accelerators() -> None:
    for fabric in fabrics().values():
        assert fabric.source and fabric.basis in ("datasheet", "assumption")
        assert fabric.bandwidth_gbs > 0 and fabric.latency_us > 0
    a100, h200 = CATALOG.get("nvidia-a100-sxm4-80gb"), CATALOG.get("nvidia-h200-sxm-141gb")
    assert intra_node_fabric(a100).bandwidth_gbs == a100.interconnect_gbs / 2
    assert inter_node_fabric(a100).id == "ib-hdr" and inter_node_fabric(h200).id == "ib-ndr"
    assert inter_node_fabric(CATALOG.get("nvidia-l4")).id == "ethernet-100g"


@pytest.mark.parametrize("strategy", ["cost", "latency", "throughput"])
def test_every_feasible_option_is_one_the_engine_accepts(strategy: str) -> None:
    # 48 heads = 48 KV heads: TP 3 and 6 split them; the engine must take whatever is chosen
    from deepserve.engine.options import EngineOptions

    config = {"model_type": "llama", "hidden_size": 6144, "num_hidden_layers": 40,
              "num_attention_heads": 48, "num_key_value_heads": 48, "intermediate_size": 16384,
              "vocab_size": 32000, "max_position_embeddings": 8192}
    shape = ModelShape.from_hf_config(config)
    pool = PoolOffer("a100", "nvidia-a100-sxm4-40gb", 8, 2, 16, 1.0, max_nodes=2)
    plan = plan_placement(shape, [pool], PlacementRequest(precision="bf16", strategy=strategy))
    feasible = [c for c in plan.ranked if c.feasible]
    assert {3, 6} <= {c.tensor_parallel for c in plan.ranked}
    for cand in feasible:
        pp = getattr(cand, "pipeline_parallel", 1)
        EngineOptions(model_dir="m", tensor_parallel=cand.tensor_parallel, pipeline_parallel=pp)
        check_layout(cand.tensor_parallel, pp, num_layers=shape.layers, attention_heads=shape.heads,
                     kv_heads=shape.kv_heads, gpus=cand.gpus_per_replica)
