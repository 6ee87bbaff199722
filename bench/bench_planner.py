"""Benchmark the placement planner: speed, and cost against a first-fit baseline.

Run: ``.venv/bin/python bench/bench_planner.py`` (pure CPU, a few seconds). Prints:

1. planner wall time for one model over 50 pools drawn from the 200+ accelerator catalog
   (goal: under 5 ms), and over one pool per catalog accelerator;
2. cost per 1M tokens of the planner's choice vs first-fit (the first pool in listing order,
   at the smallest TP that fits memory and the SLO - what a scheduler does with a GPU count),
   averaged over random pool orders, on a mixed model set (goal: at least 30% cheaper).
"""

from __future__ import annotations

import random
import statistics
import time

from deepserve.engine.hardware import load_catalog
from deepserve.operator.placement import (
    Candidate,
    ModelShape,
    PlacementRequest,
    PoolOffer,
    plan_placement,
)

LLAMA = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
         "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256}
MODELS: dict[str, tuple[dict, str]] = {
    "llama3-8b": (LLAMA, "auto"),
    "llama3-8b-fp8": (LLAMA, "fp8"),
    "qwen2.5-14b": ({"hidden_size": 5120, "num_hidden_layers": 48, "num_attention_heads": 40,
                     "num_key_value_heads": 8, "intermediate_size": 13824,
                     "vocab_size": 152064, "model_type": "qwen2"}, "auto"),
    "qwen3-30b-a3b": ({"hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32,
                       "num_key_value_heads": 4, "head_dim": 128, "moe_intermediate_size": 768,
                       "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936},
                      "auto"),
    "mixtral-8x7b": ({**LLAMA, "vocab_size": 32000, "num_local_experts": 8,
                      "num_experts_per_tok": 2}, "auto"),
    "llama3-70b": ({"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                    "num_key_value_heads": 8, "intermediate_size": 28672,
                    "vocab_size": 128256}, "auto"),
    "deepseek-v3-fp8": ({"hidden_size": 7168, "num_hidden_layers": 61,
                         "num_attention_heads": 128, "num_key_value_heads": 128,
                         "intermediate_size": 18432, "moe_intermediate_size": 2048,
                         "vocab_size": 129280, "n_routed_experts": 256, "n_shared_experts": 1,
                         "num_experts_per_tok": 8, "first_k_dense_replace": 3,
                         "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
                         "qk_nope_head_dim": 128, "v_head_dim": 128}, "fp8"),
}

# Illustrative on-demand prices per GPU-hour (USD), in the range public clouds list.
MIXED_POOLS: list[tuple[str, str, int, float]] = [
    ("t4", "nvidia-tesla-t4", 4, 0.35), ("a10g", "nvidia-a10g", 4, 1.01),
    ("l4", "nvidia-l4", 8, 0.80), ("l40s", "nvidia-l40s", 8, 1.86),
    ("a100-40", "nvidia-a100-sxm4-40gb", 8, 1.29), ("a100-80", "nvidia-a100-sxm4-80gb", 8, 1.80),
    ("h100", "nvidia-h100-sxm5-80gb", 8, 2.99), ("h200", "nvidia-h200-sxm-141gb", 8, 3.80),
    ("mi300x", "amd-instinct-mi300x", 8, 2.50), ("b200", "nvidia-b200", 8, 5.99),
]


def first_fit(plan_ranked: list[Candidate], order: list[str]) -> Candidate | None:
    """The first pool in ``order`` with a feasible option, at its smallest TP."""
    by_pool: dict[str, list[Candidate]] = {}
    for c in plan_ranked:
        if c.feasible:
            by_pool.setdefault(c.pool, []).append(c)
    for name in order:
        if name in by_pool:
            return min(by_pool[name], key=lambda c: c.tensor_parallel)
    return None


def bench_speed() -> None:
    cat = load_catalog()
    rng = random.Random(7)
    usable = [a for a in cat if a.memory_gib >= 8]
    fifty = [PoolOffer(f"pool-{i}", rng.choice(usable).id, rng.choice([1, 2, 4, 8]), 2, 8,
                       round(rng.uniform(0.3, 6), 2), max_nodes=4) for i in range(50)]
    every = [PoolOffer(f"pool-{a.id}", a.id, 8, 1, 8, 1.0, max_nodes=2) for a in cat]
    request = PlacementRequest(concurrency=16, context_length=4096, slo_min_tokens_per_s=10)
    print(f"planner speed (catalog: {len(cat)} accelerators; median of 200 runs for 50 pools, 30 otherwise)")
    for label, pools in (("50 pools", fifty), (f"{len(every)} pools (one per accelerator)", every)):
        for name in ("llama3-8b", "llama3-70b", "deepseek-v3-fp8"):
            cfg, precision = MODELS[name]
            shape = ModelShape.from_hf_config(cfg)
            req = PlacementRequest(**{**request.__dict__, "precision": precision})
            times = []
            runs = 200 if len(pools) <= 50 else 30
            for _ in range(runs):
                t0 = time.perf_counter()
                plan = plan_placement(shape, pools, req)
                times.append(time.perf_counter() - t0)
            print(f"  {label:38s} {name:16s} {statistics.median(times) * 1e3:6.2f} ms "
                  f"(p95 {sorted(times)[int(runs * 0.95) - 1] * 1e3:5.2f} ms, {len(plan.ranked)} options)")


def bench_cost(label: str, excluded: tuple[str, ...] = ()) -> None:
    pools = [PoolOffer(n, acc, gpn, 4, 4 * gpn, price, max_nodes=8)
             for n, acc, gpn, price in MIXED_POOLS if n not in excluded]
    names = [p.name for p in pools]
    rng = random.Random(11)
    orders = [rng.sample(names, len(names)) for _ in range(200)]
    request = PlacementRequest(concurrency=16, context_length=4096, slo_min_tokens_per_s=10)
    print(f"\ncost per 1M tokens, {label}: planner (strategy=cost) vs first-fit "
          "(mean over 200 random pool orders)")
    print(f"  {'model':16s} {'planner':>9s} {'first-fit':>10s} {'saving':>7s}  planner choice")
    savings, planner_total, ff_total = [], 0.0, 0.0
    for name, (cfg, precision) in MODELS.items():
        shape = ModelShape.from_hf_config(cfg)
        req = PlacementRequest(**{**request.__dict__, "precision": precision})
        plan = plan_placement(shape, pools, req)
        if plan.chosen is None or plan.chosen.cost_per_million_tokens is None:
            print(f"  {name:16s} no feasible placement: {plan.reason}")
            continue
        ff_costs = [c.cost_per_million_tokens for o in orders
                    if (c := first_fit(plan.ranked, o)) and c.cost_per_million_tokens is not None]
        ff = statistics.mean(ff_costs)
        best = plan.chosen.cost_per_million_tokens
        savings.append(1 - best / ff)
        planner_total += best
        ff_total += ff
        print(f"  {name:16s} {best:9.4f} {ff:10.4f} {1 - best / ff:7.1%}  "
              f"{plan.chosen.pool} TP={plan.chosen.tensor_parallel} {plan.chosen.precision}")
    print(f"  mean saving per model: {statistics.mean(savings):.1%}; "
          f"on equal token volume per model: {1 - planner_total / ff_total:.1%}")


if __name__ == "__main__":
    bench_speed()
    bench_cost(f"all {len(MIXED_POOLS)} pools")
    bench_cost("NVIDIA pools only", excluded=("mi300x",))
    bench_cost("dev-cluster pools (a100-80, h100, l4)",
               excluded=tuple(n for n, *_ in MIXED_POOLS if n not in ("a100-80", "h100", "l4")))
