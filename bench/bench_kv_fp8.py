"""fp8 (E4M3) KV cache on the H200 (issue #19.3): error, sequences at 8k, 1000/1000 throughput.

Random weights, Llama-3.1-8B shape, bf16 weights; the cache in bf16 or fp8. Sections:

1. error: 16 prompts of 1,000 tokens prefilled, then one decode step, with each cache;
   relative error of the last logits and how often the greedy token agrees;
2. concurrency at 8k context: the KV budget the GPU leaves after weights and a reserve,
   in 8,192-token slots per cache dtype; each pool is allocated, filled, and one decode
   step at position 8,191 runs over every slot (eager), with peak memory;
3. throughput 1000/1000 with the fp8 cache at ``--seqs`` (each its own decoder warm-up),
   ``--runs`` runs each, through the engine's bucketed decoder (bench_serving.measure).

    python3 bench/bench_kv_fp8.py --out kv_fp8.json      # on the GPU machine
    python3 bench/bench_kv_fp8.py --tiny --device cpu     # smoke test
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_h200 import LLAMA_8B, TINY, build_random, copy_bandwidth, param_bytes, sync
from bench_serving import measure, save, shape_of

from deepserve.engine.decode_graphs import BucketedDecoder
from deepserve.engine.generate import decode_step, prefill_batch
from deepserve.engine.model.cache import to_storage
from deepserve.engine.precision import relative_error

FP8 = torch.float8_e4m3fn


def error_section(model: Any, dev: str, n: int, length: int) -> dict[str, float]:
    """Last logits of one decode step after prefilling ``n`` prompts, bf16 vs fp8 cache."""
    gen = torch.Generator(device=dev).manual_seed(3)
    prompts = [torch.randint(0, model.args.vocab_size, (length,), device=dev, generator=gen)
               for _ in range(n)]
    tokens = torch.randint(0, model.args.vocab_size, (n,), device=dev, generator=gen)
    positions = torch.full((n,), length, device=dev, dtype=torch.long)
    logits = {}
    for name, kv in (("bf16", None), ("fp8", FP8)):
        model.setup_caches(n, length + 8, kv_dtype=kv)
        prefill_batch(model, prompts, list(range(n)))
        logits[name] = decode_step(model, tokens, positions)
    err = relative_error(logits["fp8"], logits["bf16"])
    agree = float((logits["fp8"].argmax(-1) == logits["bf16"].argmax(-1)).float().mean())
    print(f"error: fp8 vs bf16 KV, {n} x {length} tokens: logits relative error {err:.4f}, "
          f"greedy token equal {100 * agree:.0f}%", flush=True)
    return {"prompts": n, "length": length, "logit_rel_err": err, "greedy_agreement": agree}


def concurrency_section(model: Any, dev: str, ctx: int, reserve_gib: float) -> dict[str, Any]:
    """How many ``ctx``-token slots fit in the memory left after weights, per cache dtype."""
    a = model.args
    out: dict[str, Any] = {"ctx": ctx, "reserve_GiB": reserve_gib, "pools": []}
    model.setup_caches(1, 8)
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
    else:
        free = 2**22
    budget = free - int(reserve_gib * 2**30)
    out["kv_budget_GiB"] = budget / 2**30
    for name, kv, nbytes in (("bf16", None, 2), ("fp8", FP8, 1)):
        per_slot = a.num_layers * 2 * a.num_kv_heads * a.head_dim * nbytes * ctx
        slots = budget // per_slot
        model.setup_caches(1, 8)
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model.setup_caches(slots, ctx, kv_dtype=kv)
        for layer in model.model.layers:  # every row live: random keys and values
            cache = layer.self_attn.cache
            for buf in (cache.k_cache, cache.v_cache):
                for slot in range(slots):  # one slot at a time: no pool-sized temporary
                    buf[slot].copy_(to_storage(torch.randn(buf.shape[1:], device=dev), buf.dtype))
        tokens = torch.randint(0, a.vocab_size, (slots,), device=dev)
        positions = torch.full((slots,), ctx - 1, device=dev, dtype=torch.long)
        decode_step(model, tokens, positions)
        sync(dev)
        t0 = time.perf_counter()
        logits = decode_step(model, tokens, positions)
        sync(dev)
        step_s = time.perf_counter() - t0
        finite = bool(torch.isfinite(logits).all())
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0
        row = {"kv": name, "slots": int(slots), "bytes_per_slot": per_slot, "step_s": step_s,
               "finite": finite, "peak_GiB": peak}
        out["pools"].append(row)
        print(f"concurrency at {ctx} context: {name} cache {slots} sequences "
              f"({per_slot / 2**20:.0f} MiB each), one eager step over all {step_s * 1e3:.1f} ms, "
              f"logits finite {finite}, peak {peak:.1f} GiB", flush=True)
    out["fp8_over_bf16"] = out["pools"][1]["slots"] / max(1, out["pools"][0]["slots"])
    model.setup_caches(1, 8)
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the three sections; print and write JSON (``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--seqs", type=int, nargs="*", default=[256, 512])
    ap.add_argument("--len", type=int, default=1000)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 64])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prefill-batch", type=int, default=16)
    ap.add_argument("--reserve-gib", type=float, default=8.0)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    if a.tiny:
        a.seqs, a.len, a.steps, a.batch, a.ctx = [4], 16, 4, [1, 2], 8
    dev, cuda = a.device, a.device == "cuda"
    res: dict[str, Any] = {"torch": torch.__version__, "argv": sys.argv[1:],
                           "gpu": torch.cuda.get_device_name() if cuda else "cpu"}
    bw = copy_bandwidth(dev, 4.0 if cuda else 0.05)
    res["copy_bandwidth_GBps"] = bw / 1e9
    model = build_random(TINY if a.tiny else LLAMA_8B, dev, torch.bfloat16 if cuda else torch.float32)
    model.fuse_projections()
    wbytes = param_bytes(model)
    with torch.inference_mode():
        res["error"] = error_section(model, dev, 4 if a.tiny else 16, 32 if a.tiny else 1000)
        save(res, a.out)
        res["concurrency"] = concurrency_section(model, dev, 64 if a.tiny else 8192,
                                                 0.0 if a.tiny else a.reserve_gib)
        save(res, a.out)
        res["throughput"] = []
        shape = shape_of(model, 1)  # fp8 KV: one byte per cached number
        for seqs in a.seqs:
            model.setup_caches(seqs, 2 * a.len + 8, kv_dtype=FP8)
            decoder = BucketedDecoder(model, seqs, compile=cuda, graphs=cuda)
            warm = decoder.warm_up()
            print(f"fp8 KV, {seqs} slots: warm-up {warm:.1f} s, failures {decoder.graph_failures}", flush=True)
            run_args = argparse.Namespace(**{**vars(a), "seqs": seqs})
            gen = torch.Generator(device=dev).manual_seed(0)
            row = measure(model, decoder, run_args, bw, wbytes, shape, gen, f"fp8 KV {seqs}")
            res["throughput"].append({"seqs": seqs, "warm_up_s": warm, **row})
            save(res, a.out)
            del decoder
            gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
