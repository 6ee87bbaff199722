"""Communication share by TP/PP for a 70B model on 128 A100s (the seed's setting), from the
planner's communication model (deepserve/operator/placement/parallel.py).

Prints a Markdown table: for every TP x PP whose replica fits 80 GB A100s, the data-parallel
replicas of 128 GPUs, GiB per GPU, and the share of a decode step and of a prefill spent in
TP all-reduces and pipeline sends. This is a model, not a measurement (no multi-GPU machine
is lent here); docs/parallelism.md shows it beside the seed's claimed 43% -> 17%.

    .venv/bin/python bench/bench_parallel_share.py [--concurrency 32] [--prompt 1024]
"""

from __future__ import annotations

import argparse

from deepserve.engine.hardware import load_catalog
from deepserve.operator.placement import ModelShape
from deepserve.operator.placement.estimate import Workload
from deepserve.operator.placement.factors import DEFAULT_FACTORS
from deepserve.operator.placement.parallel import (
    communication,
    engine_can_split,
    memory_gib_per_gpu,
)

LLAMA_70B = {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672,
             "vocab_size": 128256, "max_position_embeddings": 131072}
GPUS, PER_NODE = 128, 8


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, help="sequences per replica")
    parser.add_argument("--prompt", type=int, default=1024, help="prompt tokens")
    parser.add_argument("--generated", type=int, default=256, help="generated tokens")
    args = parser.parse_args()
    shape = ModelShape.from_hf_config(LLAMA_70B)
    acc = load_catalog().get("nvidia-a100-sxm4-80gb")
    work = Workload(args.concurrency, args.prompt, args.generated)
    usable = acc.memory_gib * DEFAULT_FACTORS.memory_utilization
    print(f"Llama-3-70B shape, bf16, {GPUS} x {acc.name} ({PER_NODE} per node, "
          f"{acc.interconnect} inside, InfiniBand HDR between nodes); {args.concurrency} "
          f"sequences per replica, {args.prompt}-token prompts\n")
    print("| TP | PP | replicas (DP) | nodes/replica | GiB/GPU | comm. share of decode step "
          "| comm. share of prefill |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for tp in (1, 2, 4, 8, 16):
        for pp in (1, 2, 4, 8):
            gpus = tp * pp
            if not engine_can_split(shape, tp) or GPUS % gpus:
                continue
            need = memory_gib_per_gpu(shape, "bf16", tp, pp, work, acc)
            if need > usable:
                continue
            comm, _ = communication(shape, acc, "bf16", tp, pp, PER_NODE, work)
            nodes = max(1, gpus // PER_NODE)
            print(f"| {tp} | {pp} | {GPUS // gpus} | {nodes} | {need:.0f} | "
                  f"{comm.decode_share:.0%} | {comm.prefill_share:.0%} |")


if __name__ == "__main__":
    main()
