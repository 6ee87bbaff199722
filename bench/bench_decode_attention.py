"""Decode attention of one layer: dense (PyTorch SDPA, our flash-decoding kernel) vs HAG.

One query token per sequence over a cache of ``context`` tokens, Llama-3.1-8B head layout
(32 query heads, 8 KV heads x 128, bf16). HAG = the lightning indexer scoring every cached
token + top-k selection (top_k + sinks + local window) + the kernel reading only the
selected rows. Each variant is captured in a CUDA graph and replayed, so launch overhead
is not what is measured; times are per layer per decode step. Bytes: the K/V (and indexer
key) bytes each variant must read, against the copy bandwidth measured in the same run.

    python bench/bench_decode_attention.py                  # H200
    TRITON_INTERPRET=1 python bench/bench_decode_attention.py --device cpu --shapes 1x512 --top-k 64
        # smoke test of the script on CPU (Triton's interpreter)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_timing import graph_ms

from deepserve.engine.kernels import decode_attention, flash_decode
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.sparse.attention import select_with_bias, selection_bias
from deepserve.engine.sparse.indexer import IndexerConfig, LightningIndexer

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 1, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
            "rope_theta": 500000.0, "max_position_embeddings": 131072}


def time_ms(fn: Callable[[], Any], device: str, iters: int) -> float:
    """Mean ms per call: replayed from a CUDA graph on GPU, plain calls on CPU."""
    if device == "cuda":
        return graph_ms(fn, iters)
    fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters


def copy_bandwidth(device: str) -> float:
    if device != "cuda":
        return float("nan")
    src = torch.empty(2**31, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, 10)
    return 2 * src.numel() / (ms / 1e3)


def sdpa_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Callable[[], Any]:
    """The best dense PyTorch SDPA call that runs: FlashAttention with grouped KV heads if it
    accepts them, else the default dispatch (all rows are live: no mask needed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q4 = q[:, :, None]

    def flash() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q4, k, v, scale=scale, enable_gqa=True)

    def default() -> torch.Tensor:
        return F.scaled_dot_product_attention(q4, k, v, scale=scale, enable_gqa=True)

    try:
        flash()
        return flash
    except RuntimeError:
        return default


def run_shape(bsz: int, context: int, args: argparse.Namespace, margs: ModelArgs,
              bw: float) -> dict[str, Any]:
    device, dtype = args.device, args.dtype
    heads, kv_heads, hd = margs.num_heads, margs.num_kv_heads, margs.head_dim
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(bsz, heads, hd, device=device, dtype=dtype, generator=gen)
    k = torch.randn(bsz, kv_heads, context, hd, device=device, dtype=dtype, generator=gen)
    v = torch.randn(bsz, kv_heads, context, hd, device=device, dtype=dtype, generator=gen)
    scale = hd**-0.5
    lengths = torch.full((bsz,), context, device=device, dtype=torch.int32)
    row: dict[str, Any] = {"batch": bsz, "context": context}
    kv_bytes = 2 * bsz * kv_heads * context * hd * k.element_size()
    row["sdpa_ms"] = time_ms(sdpa_fn(q, k, v, scale), device, args.iters)
    row["kernel_ms"] = time_ms(lambda: decode_attention(q, k, v, lengths, scale), device, args.iters)
    row["dense_GBps"] = kv_bytes / (row["kernel_ms"] / 1e3) / 1e9
    dense = decode_attention(q, k, v, lengths, scale)
    ref = F.scaled_dot_product_attention(q[:, :, None], k, v, scale=scale, enable_gqa=True)[:, :, 0]
    row["kernel_vs_sdpa_max_abs"] = float((dense.float() - ref.float()).abs().max())
    for name, icfg in args.indexers.items():
        row[name] = hag_row(icfg, q, k, v, row, args, margs, gen)
    row["dense_roofline_ms"] = kv_bytes / bw * 1e3 if not math.isnan(bw) else float("nan")
    return row


def hag_row(icfg: IndexerConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            row: dict[str, Any], args: argparse.Namespace, margs: ModelArgs,
            gen: torch.Generator) -> dict[str, float]:
    """Time HAG with one indexer shape: scoring, top-k, sparse attention, and all three."""
    device, dtype = args.device, args.dtype
    bsz, kv_heads, context, hd = k.shape[0], k.shape[1], k.shape[2], k.shape[3]
    scale = hd**-0.5
    budget = args.top_k + args.sinks + args.window
    indexer = LightningIndexer(margs, icfg).to(device=device, dtype=dtype)
    keys = torch.randn(bsz, context, icfg.head_dim, device=device, dtype=dtype, generator=gen)
    x = torch.randn(bsz, 1, margs.hidden_size, device=device, dtype=dtype, generator=gen)
    cos = torch.ones(bsz, 1, hd, device=device, dtype=dtype)
    sin = torch.zeros(bsz, 1, hd, device=device, dtype=dtype)
    positions = torch.full((bsz, 1), context - 1, device=device)
    valid = torch.ones(bsz, 1, context, dtype=torch.bool, device=device)
    bias = selection_bias(valid, positions, args.sinks, args.window)  # once per pass, all layers
    scores = indexer.scores(x, x, keys, cos, sin)
    index, chosen = select_with_bias(scores, bias, budget)
    index1, chosen1 = index[:, 0].contiguous(), chosen[:, 0].contiguous()
    t_score = time_ms(lambda: indexer.scores(x, x, keys, cos, sin), device, args.iters)
    t_topk = time_ms(lambda: select_with_bias(scores, bias, budget), device, args.iters)
    t_attn = time_ms(lambda: decode_attention(q, k, v, None, scale, index=index1, valid=chosen1),
                     device, args.iters)

    def hag() -> torch.Tensor:
        s = indexer.scores(x, x, keys, cos, sin)
        idx, ok = select_with_bias(s, bias, budget)
        return decode_attention(q, k, v, None, scale, index=idx[:, 0], valid=ok[:, 0])

    t_hag = time_ms(hag, device, args.iters)
    kv_bytes = 2 * bsz * kv_heads * context * hd * k.element_size()
    sparse_bytes = (2 * bsz * kv_heads * budget * hd + bsz * context * icfg.head_dim) * k.element_size()
    return {"indexer_ms": t_score, "topk_ms": t_topk, "attention_ms": t_attn, "hag_ms": t_hag,
            "speedup_vs_sdpa": row["sdpa_ms"] / t_hag, "speedup_vs_kernel": row["kernel_ms"] / t_hag,
            "bytes_ratio": kv_bytes / sparse_bytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", nargs="+", default=["1x8192", "1x32768", "1x65536", "1x131072",
                                                     "16x8192", "16x32768", "16x65536", "16x131072"])
    ap.add_argument("--top-k", type=int, default=2048)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    a.dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    flash_decode.RUN_ON_CPU = a.device == "cpu"  # needs TRITON_INTERPRET=1 (see above)
    margs = ModelArgs.from_hf_config(LLAMA_8B)
    # ours (engine default for a 128-dim rotary model) and DeepSeek-V3.2's indexer size
    a.indexers = {"hag": IndexerConfig.for_model(margs),
                  "hag_v32_indexer": IndexerConfig(n_heads=64, head_dim=128, rope_dim=64)}
    bw = copy_bandwidth(a.device)
    res: dict[str, Any] = {"torch": torch.__version__, "copy_bandwidth_GBps": bw / 1e9, "rows": []}
    if a.device == "cuda":
        res["gpu"] = torch.cuda.get_device_name()
    print(f"copy bandwidth {bw / 1e9:,.0f} GB/s; budget top_k {a.top_k} + sinks {a.sinks} + "
          f"window {a.window}; indexers: " + ", ".join(f"{n}={c.n_heads}x{c.head_dim}"
                                                        for n, c in a.indexers.items()), flush=True)
    print(f"{'B':>3} {'ctx':>7} {'sdpa ms':>8} {'kernel ms':>9} {'GB/s':>6} | "
          f"{'idx ms':>7} {'topk ms':>7} {'attn ms':>7} {'HAG ms':>7} {'x sdpa':>6} {'x kern':>6} | "
          f"{'V3.2-idx HAG ms':>15} {'x sdpa':>6}", flush=True)
    for shape in a.shapes:
        bsz, context = (int(s) for s in shape.split("x"))
        row = run_shape(bsz, context, a, margs, bw)
        res["rows"].append(row)
        h, h2 = row["hag"], row["hag_v32_indexer"]
        print(f"{bsz:>3} {context:>7} {row['sdpa_ms']:8.3f} {row['kernel_ms']:9.3f} "
              f"{row['dense_GBps']:6.0f} | {h['indexer_ms']:7.3f} {h['topk_ms']:7.3f} "
              f"{h['attention_ms']:7.3f} {h['hag_ms']:7.3f} {h['speedup_vs_sdpa']:6.2f} "
              f"{h['speedup_vs_kernel']:6.2f} | {h2['hag_ms']:15.3f} {h2['speedup_vs_sdpa']:6.2f}",
              flush=True)
        if a.device == "cuda":
            torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
