"""The optimised planner returns exactly the plan of the reference planner (#21.1).

``reference_planner`` is the planner as it was before the cluster-scale optimisation; on
random instances (dense, MoE and MLA shapes up to DeepSeek-V3 size; up to 24 pools of up to
300 nodes, MIG pools, free-GPU fragmentation, prices, fixed GPUs per replica, SLOs) both must
give the same chosen option, the same ranked list (every field, floats bit for bit) and the
same reason. Instances are drawn so that a good share goes through the multi-node search.
"""

from __future__ import annotations

import random

import pytest
from reference_planner import reference_plan_placement

from deepserve.engine.hardware import load_catalog
from deepserve.operator.placement import ModelShape, PlacementRequest, PoolOffer, plan_placement

pytestmark = pytest.mark.unit

CAT = load_catalog()
BIG = ["nvidia-h100-sxm5-80gb", "nvidia-h200-sxm-141gb", "nvidia-a100-sxm4-80gb",
       "nvidia-a100-sxm4-40gb", "amd-mi300x", "nvidia-b200"]
SMALL = [a.id for a in CAT if a.memory_gib >= 4]
MIG = {"nvidia-a100-sxm4-40gb": ["1g.5gb", "3g.20gb"], "nvidia-h100-sxm5-80gb": ["1g.10gb", "3g.40gb"]}


def random_shape(rng: random.Random) -> ModelShape:
    head_dim = rng.choice([64, 128])
    heads = rng.choice([16, 32, 40, 64, 96, 128])
    kv_heads = rng.choice([d for d in (1, 2, 4, 8, heads) if heads % d == 0])
    hidden, layers = heads * head_dim, rng.choice([24, 32, 61, 80, 126])
    dense = 12 * layers * hidden * hidden * rng.choice([1, 1, 2, 4]) + 2 * 100000 * hidden
    experts = rng.choice([0, 0, 8, 64, 256])
    k = min(rng.choice([1, 2, 8]), experts - 1) if experts else 0
    total = dense * (1 + (experts // 4 if experts else 0))
    active = dense if not experts else dense + (total - dense) * k // experts
    mla = rng.random() < 0.2
    return ModelShape(
        total_params=total, active_params=min(active, total), layers=layers, hidden_size=hidden,
        heads=heads, kv_heads=heads if mla else kv_heads, head_dim=head_dim, vocab_size=100000,
        max_context=32768, moe_experts=experts, experts_per_token=k,
        kv_lora_rank=512 if mla else 0, qk_rope_head_dim=64 if mla else 0)


def random_pools(rng: random.Random) -> list[PoolOffer]:
    pools = []
    for i in range(rng.randint(1, 24)):
        acc = rng.choice(BIG) if rng.random() < 0.7 else rng.choice(SMALL)
        if acc not in CAT:
            acc = rng.choice(SMALL)
        partition = rng.choice(MIG[acc]) if acc in MIG and rng.random() < 0.15 else ""
        gpn = rng.choice([1, 2, 4, 8, 8, 8])
        nodes = rng.choice([0, 2, 10, 50, 300])
        node_free = (tuple(rng.choice([0, gpn, gpn, rng.randint(0, gpn)]) for _ in range(nodes))
                     if rng.random() < 0.7 else ())
        pools.append(PoolOffer(
            name=f"p{i}", accelerator_id=acc, gpus_per_node=gpn, nodes=nodes,
            free_gpus=sum(node_free) if node_free else rng.randint(0, nodes * gpn),
            price_per_gpu_hour=None if rng.random() < 0.1 else round(rng.uniform(0.2, 6.0), 2),
            currency="USD" if rng.random() > 0.05 else "EUR",
            max_nodes=nodes + rng.choice([0, 0, 2, 40]), node_free_gpus=node_free,
            partition=partition,
            gpu_resource=f"nvidia.com/mig-{partition}" if partition else ""))
    return pools


def random_request(rng: random.Random, pools: list[PoolOffer]) -> PlacementRequest:
    return PlacementRequest(
        precision=rng.choice(["auto", "auto", "bf16", "fp16", "fp8"]),
        strategy=rng.choice(["cost", "latency", "throughput"]),
        allowed_pools=tuple(p.name for p in pools if rng.random() < 0.7) if rng.random() < 0.2 else (),
        gpus_per_replica=rng.choice([8, 16, 32]) if rng.random() < 0.1 else None,
        max_tp=rng.choice([4, 8, 8]), replicas=rng.choice([1, 1, 2, 4, 16]),
        concurrency=rng.choice([1, 8, 64]), context_length=rng.choice([2048, 8192, 32768]),
        slo_min_tokens_per_s=rng.choice([0, 0, 5, 20]), slo_max_ttft_ms=rng.choice([0, 0, 3000]))


def test_optimised_planner_equals_reference_on_random_instances() -> None:
    rng = random.Random(2121)
    multi = chosen = 0
    for _ in range(300):
        shape, pools = random_shape(rng), random_pools(rng)
        req = random_request(rng, pools)
        got, want = plan_placement(shape, pools, req), reference_plan_placement(shape, pools, req)
        assert got == want, (shape, req)
        chosen += got.chosen is not None
        multi += getattr(got.chosen, "nodes_per_replica", 1) > 1
    # the instances exercise both paths (counts measured for seed 2121; a generator change
    # that stops reaching the multi-node search fails here instead of passing vacuously)
    assert chosen >= 150 and multi >= 40, (chosen, multi)  # 236 and 71 for this seed
