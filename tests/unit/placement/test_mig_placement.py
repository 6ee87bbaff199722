"""#17.2: a MIG pool offers the slice's memory, compute and bandwidth, never the whole card's."""

from __future__ import annotations

from typing import Any

import pytest
from placement_configs import LLAMA3_8B

from deepserve.engine.contract import builtin_config
from deepserve.operator.placement import (
    ModelShape,
    PlacementRequest,
    PoolOffer,
    discover_pools,
    plan_placement,
    pools_from_document,
)

pytestmark = pytest.mark.unit

A100 = "nvidia-a100-sxm4-40gb"
# ~21.5B parameters: 40 GiB of bf16 weights
MODEL_40GIB = ModelShape.from_hf_config({**LLAMA3_8B, "num_hidden_layers": 92})
TINY = ModelShape.from_hf_config(builtin_config("tiny-llama"))


def _node(name: str, resources: dict[str, int], product: str, pool: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product,
                                                   "deepserve.io/pool": pool}},
            "status": {"allocatable": {k: str(v) for k, v in resources.items()}}}


def test_a_40gib_model_is_never_placed_on_a_5gb_slice() -> None:
    assert 39 < MODEL_40GIB.total_params * 2 / 2**30 < 41
    slices = PoolOffer("mig", A100, 7, 1, 7, 0.10, max_nodes=4, partition="1g.5gb")
    plan = plan_placement(MODEL_40GIB, [slices], PlacementRequest(precision="bf16"))
    assert plan.chosen is None
    tp1 = next(c for c in plan.ranked if c.tensor_parallel == 1)
    assert tp1.rejected_code == "NoPoolFits"
    assert "MIG 1g.5gb offers 4.2 usable of 4.657" in (tp1.rejected_reason or "")
    # slices have no NVLink: they never form a tensor-parallel group
    assert all(c.rejected_code == "TensorParallelLimit" for c in plan.ranked if c.tensor_parallel > 1)
    # the whole card holds it only at TP>=2, so it goes there, never to the slice
    whole = PoolOffer("a100", A100, 8, 1, 8, 1.20, max_nodes=1)
    plan = plan_placement(MODEL_40GIB, [slices, whole], PlacementRequest(precision="bf16"))
    assert plan.chosen is not None and plan.chosen.pool == "a100"


def test_discovered_mig_nodes_are_pools_of_slices_in_both_strategies() -> None:
    nodes = [
        # mixed strategy: slices are their own resource, the product label names the card
        _node("m1", {"nvidia.com/mig-1g.5gb": 7}, "NVIDIA-A100-SXM4-40GB", "mixed"),
        # single strategy: nvidia.com/gpu counts slices, the product label names the slice
        _node("s1", {"nvidia.com/gpu": 3}, "NVIDIA-A100-SXM4-40GB-MIG-2g.10gb", "single"),
        _node("w1", {"nvidia.com/gpu": 8}, "NVIDIA-A100-SXM4-40GB", "whole"),
    ]
    found = {p.name: p for p in discover_pools(nodes, [], []).pools}
    assert (found["mixed"].partition, found["mixed"].gpu_resource) == ("1g.5gb", "nvidia.com/mig-1g.5gb")
    assert (found["single"].partition, found["single"].gpu_resource) == ("2g.10gb", "nvidia.com/gpu")
    assert found["whole"].partition == ""
    on_slice = plan_placement(TINY, [found["mixed"]], PlacementRequest(concurrency=1, context_length=512))
    assert on_slice.chosen is not None and on_slice.chosen.pool == "mixed"  # a tiny model fits a slice
    plan = plan_placement(MODEL_40GIB, list(found.values()), PlacementRequest(precision="bf16"))
    assert plan.chosen is not None and plan.chosen.pool == "whole"
    assert {c.pool for c in plan.ranked if c.feasible} == {"whole"}


def test_a_slice_is_slower_than_the_card() -> None:
    slices = PoolOffer("mig", A100, 7, 1, 7, 0.10, max_nodes=1, partition="3g.20gb")
    whole = PoolOffer("a100", A100, 8, 1, 8, 1.20, max_nodes=1)
    request = PlacementRequest(precision="bf16", concurrency=1, context_length=512,
                               gpus_per_replica=1)
    small = plan_placement(TINY, [slices], request).chosen
    full = plan_placement(TINY, [whole], request).chosen
    assert small is not None and full is not None
    assert small.prefill_tokens_per_s < full.prefill_tokens_per_s


def test_pools_file_mig_profile_is_read_and_checked() -> None:
    (pool,) = pools_from_document({"pools": [{"name": "m", "acceleratorId": A100, "gpusPerNode": 7,
                                              "migProfile": "1g.5gb"}]})
    assert pool.partition == "1g.5gb" and pool.gpu_resource == "nvidia.com/mig-1g.5gb"
    with pytest.raises(ValueError, match=r"pools\[0\]\.migProfile"):
        pools_from_document({"pools": [{"name": "m", "acceleratorId": A100, "gpusPerNode": 7,
                                        "migProfile": "half"}]})


def test_slices_never_form_a_multi_node_replica() -> None:
    # 3g.20gb slices, two a node, many nodes: a 40 GiB model must not be spread over them
    slices = PoolOffer("mig3g", "nvidia-h100-sxm5-80gb", 2, 8, 16, 0.5, max_nodes=8, partition="3g.40gb")
    plan = plan_placement(MODEL_40GIB, [slices], PlacementRequest(precision="bf16"))
    assert plan.chosen is None
    whole = PoolOffer("h100", "nvidia-h100-sxm5-80gb", 2, 8, 16, 2.0, max_nodes=8)
    assert plan_placement(MODEL_40GIB, [whole], PlacementRequest(precision="bf16")).chosen is not None
