"""Property: on 1,000 random instances the planner's choice is a brute-force optimum.

The brute force below re-states every rule from the spec on its own (it shares only the
memory/speed estimator with the planner) and scans every pool x precision x TP 1..16.
"""

from __future__ import annotations

import math
import random

import pytest

from deepserve.engine.hardware import load_catalog
from deepserve.operator.placement import (
    DEFAULT_FACTORS,
    ModelShape,
    PlacementRequest,
    PoolOffer,
    estimate,
    plan_placement,
)

pytestmark = pytest.mark.unit

CAT = load_catalog()
ACCELERATORS = [a for a in CAT if a.memory_gib >= 4]


def random_shape(rng: random.Random) -> ModelShape:
    head_dim = rng.choice([64, 128])
    heads = rng.choice([8, 12, 16, 24, 32, 40, 48, 64, 96, 128])
    kv_heads = rng.choice([d for d in (1, 2, 4, 8, heads) if heads % d == 0])
    hidden, layers = heads * head_dim, rng.randint(8, 96)
    dense = 12 * layers * hidden * hidden + 2 * 50000 * hidden
    experts = rng.choice([0, 0, 8, 64])
    k = rng.choice([1, 2, 8]) if experts else 0
    k = min(k, experts - 1) if experts else 0
    total = dense * (1 + (experts // 4 if experts else 0))
    active = dense if not experts else dense + (total - dense) * k // experts
    mla = rng.random() < 0.15
    return ModelShape(
        total_params=total, active_params=min(active, total), layers=layers, hidden_size=hidden,
        heads=heads, kv_heads=heads if mla else kv_heads, head_dim=head_dim, vocab_size=50000,
        max_context=32768, moe_experts=experts, experts_per_token=k,
        kv_lora_rank=512 if mla else 0, qk_rope_head_dim=64 if mla else 0,
    )


def random_pools(rng: random.Random) -> list[PoolOffer]:
    pools = []
    for i in range(rng.randint(1, 8)):
        acc = rng.choice(ACCELERATORS)
        gpn = rng.choice([1, 2, 4, 8])
        nodes = rng.randint(0, 3)
        node_free = tuple(rng.randint(0, gpn) for _ in range(nodes)) if rng.random() < 0.5 else ()
        pools.append(PoolOffer(
            name=f"p{i}", accelerator_id=acc.id if rng.random() > 0.03 else "unknown-x",
            gpus_per_node=gpn, nodes=nodes,
            free_gpus=sum(node_free) if node_free else rng.randint(0, nodes * gpn),
            price_per_gpu_hour=None if rng.random() < 0.1 else round(rng.uniform(0.2, 6.0), 2),
            currency="USD" if rng.random() > 0.05 else "EUR",
            max_nodes=nodes + rng.choice([0, 0, 1, 4]), node_free_gpus=node_free,
        ))
    return pools


def random_request(rng: random.Random, pools: list[PoolOffer]) -> PlacementRequest:
    ctx = rng.choice([1024, 4096, 8192, 32768])
    return PlacementRequest(
        precision=rng.choice(["auto", "auto", "bf16", "fp16", "fp8", "fp32"]),
        strategy=rng.choice(["cost", "latency", "throughput"]),
        allowed_pools=tuple(p.name for p in pools if rng.random() < 0.7) if rng.random() < 0.2
        else (),
        gpus_per_replica=rng.choice([1, 2, 4, 8]) if rng.random() < 0.15 else None,
        max_tp=rng.choice([1, 2, 4, 8, 8]), replicas=rng.randint(1, 4),
        concurrency=rng.choice([1, 4, 16, 64]), context_length=ctx,
        slo_min_tokens_per_s=rng.choice([0, 0, 5, 20, 60]),
        slo_max_ttft_ms=rng.choice([0, 0, 500, 3000]),
    )


def brute_force(shape: ModelShape, pools: list[PoolOffer], req: PlacementRequest) -> list[tuple]:
    """Every feasible option as (objective tuple, pool, tp), from the spec's rules alone."""
    work = req.workload()
    out = []
    for pool in pools:
        if req.allowed_pools and pool.name not in req.allowed_pools:
            continue
        if pool.accelerator_id not in CAT:
            continue
        if pool.price_per_gpu_hour is not None and pool.currency != req.currency:
            continue
        acc = CAT.get(pool.accelerator_id)
        if req.precision == "auto":  # the engine's auto loads bf16; elsewhere a fixed precision
            precs = [p for p in ("bf16", "fp16", "fp32") if acc.tflops.get(p, 0) > 0][:1]
            precs = ["auto" if p == "bf16" else p for p in precs]
        else:
            precs = [req.precision] if acc.tflops.get(req.precision, 0) > 0 else []
        for prec in precs:
            for tp in range(1, 17):
                if req.gpus_per_replica is not None and tp != req.gpus_per_replica:
                    continue
                if tp > pool.gpus_per_node or tp > req.max_tp or shape.heads % tp:
                    continue
                if not (shape.kv_lora_rank or shape.kv_heads % tp == 0 or tp % shape.kv_heads == 0):
                    continue
                if tp > 1 and acc.interconnect_gbs <= 0:
                    continue
                est = estimate(shape, acc, prec, tp, work)
                if est.memory_gib_per_gpu > acc.memory_gib * DEFAULT_FACTORS.memory_utilization:
                    continue
                if pool.node_free_gpus:
                    now = sum(f // tp for f in pool.node_free_gpus)
                else:
                    now = pool.free_gpus // tp
                if now + max(0, pool.max_nodes - pool.nodes) * (pool.gpus_per_node // tp) < req.replicas:
                    continue
                if req.slo_min_tokens_per_s and 1 / est.decode_step_s < req.slo_min_tokens_per_s:
                    continue
                if req.slo_max_ttft_ms and est.prefill_s * 1e3 > req.slo_max_ttft_ms:
                    continue
                latency = est.prefill_s + work.generated_tokens * est.decode_step_s
                price = pool.price_per_gpu_hour
                cost = math.inf if price is None else price * tp / 3600 / est.replica_tokens_per_s * 1e6
                objective = {"cost": cost, "latency": latency,
                             "throughput": -est.replica_tokens_per_s}[req.strategy]
                out.append((objective, pool.name, tp))
    return out


def test_planner_choice_equals_brute_force_optimum_on_1000_random_instances() -> None:
    rng = random.Random(20251129)
    chosen_count = 0
    for i in range(1000):
        shape, pools = random_shape(rng), random_pools(rng)
        req = random_request(rng, pools)
        plan = plan_placement(shape, pools, req)
        options = brute_force(shape, pools, req)
        if not options:  # no single node holds it: only a multi-node replica (parallel.py)
            assert plan.chosen is None or getattr(plan.chosen, "nodes_per_replica", 1) > 1, (
                i, plan.chosen)
            continue
        chosen_count += 1
        best = min(o[0] for o in options)
        c = plan.chosen
        assert c is not None, (i, plan.reason, options[:3])
        assert (c.pool, c.tensor_parallel) in {(o[1], o[2]) for o in options}, i
        value = {"cost": c.cost_per_million_tokens if c.cost_per_million_tokens is not None
                 else math.inf, "latency": c.request_latency_ms / 1e3,
                 "throughput": -c.replica_tokens_per_s}[req.strategy]
        assert value == best or math.isclose(value, best, rel_tol=1e-9), (i, value, best)
        feasible = [x for x in plan.ranked if x.feasible]
        assert len(feasible) == len(options), i
    assert chosen_count > 300  # the generator must exercise real choices, not just refusals
