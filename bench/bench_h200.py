"""Engine speed on one GPU against the hardware's limits and against HF transformers.

Random weights with the shape of Llama-3.1-8B (bf16); nothing is downloaded. Prints a table
and writes JSON (``--out``). Sections:

1. copy bandwidth (device-to-device), the HBM roofline's denominator, measured in this run;
2. decode tokens/s at batch 1, 8, 64: our engine eager, replayed from a CUDA graph and
   with torch.compile (reduce-overhead = CUDA graphs), against the roofline (weight + KV
   bytes per step / measured bandwidth) and against transformers ``generate`` on the same
   inputs; ``--baseline`` first times the path before the decode kernels (separate q/k/v
   and gate/up matmuls, masked SDPA over the whole static cache) on the same weights;
3. throughput with many concurrent sequences (prompt/output 1000/1000): prompts prefilled
   ``--prefill-batch`` at a time, then decoded together;
4. peak GPU memory against context and batch.

    python bench/bench_h200.py --baseline --out h200.json  # on the GPU machine
    python bench/bench_h200.py --tiny --device cpu        # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_timing import capture, graph_ms

from deepserve.engine.generate import decode_step, prefill_batch
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.attention import dense_attention, sdpa_attention, set_attention_fn
from deepserve.engine.model.transformer import Transformer

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
}
TINY = {**LLAMA_8B, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1024,
        "bos_token_id": 1, "eos_token_id": 2}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, iters: int, warmup: int = 3) -> float:
    """Mean seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def copy_bandwidth(device: str, gib: float) -> float:
    """Bytes moved (read + write) per second by a device-to-device copy."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), device, iters=10)
    return 2 * n * 2 / t


def build_random(config: dict[str, Any], device: str, dtype: torch.dtype) -> Transformer:
    """The engine's Transformer with random weights, built directly on ``device``."""
    args = ModelArgs.from_hf_config(config)
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device=device).to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)
    return model.eval()


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_token(args: ModelArgs, dtype_bytes: int) -> int:
    return args.num_layers * 2 * args.num_kv_heads * args.head_dim * dtype_bytes


def cuda_graph_step(model: Transformer, tokens: torch.Tensor,
                    positions: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Capture one decode step in a CUDA graph (static inputs); return its replay."""
    with torch.no_grad():
        graph, out = capture(lambda: decode_step(model, tokens, positions))

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def make_step(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor,
              mode: str) -> Callable[[], torch.Tensor]:
    """eager: plain PyTorch; graph: a captured CUDA graph; compiled: torch.compile."""
    if mode == "graph":
        return cuda_graph_step(model, tokens, positions)
    if mode == "compiled":
        fn = torch.compile(decode_step, mode="reduce-overhead", fullgraph=False)
        return lambda: fn(model, tokens, positions)
    return lambda: decode_step(model, tokens, positions)


def bench_decode(model: Transformer, batch: int, ctx: int, steps: int, device: str,
                 mode: str) -> float:
    """Seconds per decode step of ``batch`` sequences at context ``ctx``."""
    model.setup_caches(batch, ctx + steps + 8)
    tokens = torch.randint(0, model.args.vocab_size, (batch,), device=device)
    positions = torch.full((batch,), ctx, device=device, dtype=torch.long)
    with torch.no_grad():
        step = make_step(model, tokens, positions, mode)
        return timed(step, device, iters=steps, warmup=5)


def bench_hf(config: dict[str, Any], batch: int, ctx: int, new: int, device: str) -> float:
    """Seconds per decode step of transformers' generate (greedy, default cache)."""
    import transformers

    cfg = transformers.LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, ctx), device=device)
    kw = {"do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        hf.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up

        def run(n: int) -> float:
            sync(device)
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            sync(device)
            return time.perf_counter() - t0

        t_prefill = min(run(1) for _ in range(3))
        total = min(run(new + 1) for _ in range(2))
    return (total - t_prefill) / new


def bench_throughput(model: Transformer, seqs: int, prompt: int, output: int, device: str,
                     mode: str, prefill_at_once: int) -> dict[str, float]:
    """Prefill ``seqs`` prompts ``prefill_at_once`` at a time, then decode all together."""
    model.setup_caches(seqs, prompt + output + 8)
    with torch.no_grad():
        prompts = torch.randint(0, model.args.vocab_size, (seqs, prompt), device=device)
        sync(device)
        t0 = time.perf_counter()
        last = []
        for first in range(0, seqs, prefill_at_once):
            rows = list(range(first, min(seqs, first + prefill_at_once)))
            last.append(prefill_batch(model, [prompts[i] for i in rows], rows).argmax(-1))
        sync(device)
        t_prefill = time.perf_counter() - t0
        positions = torch.full((seqs,), prompt, device=device, dtype=torch.long)
        tokens = torch.cat(last)
        step = make_step(model, tokens, positions, mode)  # static inputs, updated in place
        for _ in range(3):  # compile / capture outside the timed loop; rewrites row `prompt` only
            step()
        positions.fill_(prompt)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(output):
            tokens.copy_(step().argmax(-1))
            positions.add_(1)
        sync(device)
        t_decode = time.perf_counter() - t0
    total = t_prefill + t_decode
    return {"seqs": seqs, "prefill_batch": prefill_at_once, "mode": mode, "prefill_s": t_prefill,
            "decode_s": t_decode, "output_tokens_per_s": seqs * output / total,
            "total_tokens_per_s": seqs * (prompt + output) / total,
            "prefill_tokens_per_s": seqs * prompt / t_prefill}


def aps_section(model: Transformer, a: argparse.Namespace, wbytes: int, kvb: int,
                bw: float) -> dict[str, Any]:
    """Adaptive precision on the 8B shape: fp8 vs bf16 on the model's GEMM shapes, then
    decode speed, prefill time and output error of the whole model in each precision."""
    from deepserve.engine.generate import prefill_batch
    from deepserve.engine.precision import (
        apply_adaptive_precision,
        fp8_hardware_support,
        fp8_linear,
        quantize_activation,
        quantize_weight,
        relative_error,
    )

    native, reason = fp8_hardware_support("cuda")
    out: dict[str, Any] = {"fp8_native": native, "fp8_reason": reason, "gemm": []}
    args = model.args
    hidden, inter = args.hidden_size, args.intermediate_size
    qkv = (args.num_heads + 2 * args.num_kv_heads) * args.head_dim
    shapes = {"qkv": (hidden, qkv), "o": (args.num_heads * args.head_dim, hidden),
              "gate_up": (hidden, 2 * inter), "down": (inter, hidden)}
    gen = torch.Generator(device="cuda").manual_seed(1)
    print(f"APS: fp8 {'torch._scaled_mm' if native else 'reference'} ({reason})", flush=True)
    print(f"{'M':>5} {'GEMM':>8} {'bf16 ms':>8} {'fp8 ms':>8} {'x':>5} {'fp8 mm-only ms':>14} {'x':>5} "
          f"{'rel err':>8}", flush=True)
    for m in (1, 64, 2048, 16384):
        for name, (k, n) in shapes.items():
            x = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
            w = (torch.randn(n, k, device="cuda", generator=gen) / k**0.5).bfloat16()
            q = quantize_weight(w)
            xq, xs = quantize_activation(x)
            t16 = graph_ms(lambda x=x, w=w: x @ w.t())
            t8 = graph_ms(lambda x=x, q=q: fp8_linear(x, q, None, use_scaled_mm=native))
            tmm = graph_ms(lambda xq=xq, xs=xs, q=q: torch._scaled_mm(
                xq, q.data.t(), scale_a=xs, scale_b=q.scale.t(), out_dtype=torch.bfloat16)) if native else float("nan")
            err = relative_error(fp8_linear(x, q, None, use_scaled_mm=native).float(), x.float() @ w.float().t())
            out["gemm"].append({"m": m, "gemm": name, "k": k, "n": n, "bf16_ms": t16, "fp8_ms": t8,
                                "fp8_mm_only_ms": tmm, "rel_err": err})
            print(f"{m:>5} {name:>8} {t16:8.4f} {t8:8.4f} {t16 / t8:5.2f} {tmm:14.4f} {t16 / tmm:5.2f} "
                  f"{err:8.4f}", flush=True)
    handle = apply_adaptive_precision(model, precisions=("bf16", "fp8"))
    out["extra_GiB"] = handle.extra_bytes / 2**30
    prompts = [torch.randint(0, args.vocab_size, (1000,), device="cuda", generator=gen) for _ in range(16)]
    results: dict[str, Any] = {}
    for precision in ("bf16", "fp8"):
        with handle.use(precision), torch.no_grad():
            model.setup_caches(16, 1100)
            prefill_batch(model, prompts, list(range(16)))
            sync("cuda")
            t0 = time.perf_counter()
            logits = prefill_batch(model, prompts, list(range(16)))
            sync("cuda")
            t_prefill = time.perf_counter() - t0
            row: dict[str, Any] = {"prefill_16x1000_s": t_prefill, "logits": logits}
            for b in (1, 64):
                t = bench_decode(model, b, a.ctx, a.steps, "cuda", "graph")
                row[f"decode_b{b}_tok_s"] = b / t
        results[precision] = row
    err = relative_error(results["fp8"]["logits"], results["bf16"]["logits"].float())
    agree = float((results["fp8"]["logits"].argmax(-1) == results["bf16"]["logits"].argmax(-1)).float().mean())
    for precision, row in results.items():
        row.pop("logits")
        print(f"APS {precision}: prefill 16x1000 {row['prefill_16x1000_s']:.3f} s; decode (graph) "
              f"b1 {row['decode_b1_tok_s']:.1f} tok/s, b64 {row['decode_b64_tok_s']:.1f} tok/s", flush=True)
    out.update({"model": results, "logit_rel_err_fp8_vs_bf16": err, "greedy_agreement": agree})
    print(f"APS fp8 vs bf16 last-token logits: relative error {err:.4f}, same greedy token "
          f"{100 * agree:.0f}% (random weights; bound 0.007)", flush=True)
    return out


def decode_rows(model: Transformer, a: argparse.Namespace, modes: list[str], variant: str,
                wbytes: int, kvb: int, bw: float) -> list[dict[str, Any]]:
    rows = []
    for b in a.batch:
        roof_bytes = wbytes + b * a.ctx * kvb  # useful bytes per step: weights + live KV
        roof = b / (roof_bytes / bw)
        for mode in modes:
            t = bench_decode(model, b, a.ctx, a.steps, a.device, mode)
            row = {"variant": variant, "batch": b, "mode": mode, "ms_per_step": t * 1e3,
                   "tokens_per_s": b / t, "roofline_tokens_per_s": roof,
                   "fraction_of_roofline": (b / t) / roof}
            rows.append(row)
            print(f"{variant:>8} {b:>5} {mode:>9} {t * 1e3:8.2f} {b / t:9.1f} {roof:14.1f} "
                  f"{100 * (b / t) / roof:6.1f}%", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (smoke test)")
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 8, 64],
                    help="decode batch sizes (none: skip the decode table)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    ap.add_argument("--baseline", action="store_true",
                    help="first time the path before the decode kernels (graph mode)")
    ap.add_argument("--tune", action="store_true",
                    help="Inductor coordinate-descent tuning of its generated kernels (gpt-fast's setting)")
    ap.add_argument("--throughput-seqs", type=int, nargs="*", default=[128])
    ap.add_argument("--throughput-len", type=int, default=1000)
    ap.add_argument("--prefill-batch", type=int, default=16)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--aps", action="store_true",
                    help="adaptive precision: fp8 vs bf16 GEMMs of the model, decode, prefill, error")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    dev = a.device
    torch._dynamo.config.cache_size_limit = 64  # one graph per batch size and variant
    if a.tune:
        import torch._inductor.config as inductor_config
        inductor_config.coordinate_descent_tuning = True
    config = TINY if a.tiny else LLAMA_8B
    res: dict[str, Any] = {"torch": torch.__version__, "device": dev,
                           "model": "tiny" if a.tiny else "llama-3.1-8b-shape", "argv": sys.argv[1:]}
    if dev == "cuda":
        res["gpu"] = torch.cuda.get_device_name()
    bw = copy_bandwidth(dev, 0.25 if a.tiny else 4.0)
    res["copy_bandwidth_GBps"] = bw / 1e9
    print(f"copy bandwidth (read+write): {bw / 1e9:,.0f} GB/s", flush=True)

    model = build_random(config, dev, torch.bfloat16 if dev == "cuda" else torch.float32)
    wbytes = param_bytes(model)
    kvb = kv_bytes_per_token(model.args, 2 if dev == "cuda" else 4)
    res["weight_GB"] = wbytes / 1e9
    print(f"{'variant':>8} {'batch':>5} {'mode':>9} {'ms/step':>8} {'tok/s':>9} {'roofline tok/s':>14} "
          f"{'% roof':>7}", flush=True)
    cuda = dev == "cuda"
    rows = []
    if a.baseline:
        set_attention_fn(model, sdpa_attention)
        rows += decode_rows(model, a, ["graph"] if cuda else ["eager"], "before", wbytes, kvb, bw)
        set_attention_fn(model, dense_attention)
    model.fuse_projections()
    modes = ["eager"] + (["graph"] + (["compiled"] if a.compile else []) if cuda else [])
    rows += decode_rows(model, a, modes, "after", wbytes, kvb, bw)
    res["decode"] = rows
    peak = []
    if cuda and not a.skip_memory:
        for b, s in [(1, 8192), (1, 32768), (8, 8192), (64, 2048), (64, 8192)]:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            model.setup_caches(b, s)
            peak.append({"batch": b, "max_seq": s, "peak_GiB": torch.cuda.max_memory_allocated() / 2**30})
        res["peak_memory"] = peak
        print("peak memory:", ", ".join(f"b{p['batch']}xS{p['max_seq']}={p['peak_GiB']:.1f}GiB" for p in peak), flush=True)
    if a.aps and cuda:
        res["aps"] = aps_section(model, a, wbytes, kvb, bw)
    res["throughput"] = []
    for seqs in a.throughput_seqs:
        n, length = (seqs, a.throughput_len) if not a.tiny else (4, 16)
        thr = bench_throughput(model, n, length, length, dev, modes[-1], min(a.prefill_batch, n))
        res["throughput"].append(thr)
        print(f"throughput {thr['seqs']} seqs ({thr['mode']}): {thr['output_tokens_per_s']:,.0f} output tok/s, "
              f"{thr['total_tokens_per_s']:,.0f} total tok/s (prefill {thr['prefill_s']:.1f}s at "
              f"{thr['prefill_tokens_per_s']:,.0f} tok/s, decode {thr['decode_s']:.1f}s)", flush=True)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if not a.no_hf:
        hf_rows = []
        for b in a.batch:
            t = bench_hf(config, b, a.ctx, 32 if not a.tiny else 16, dev)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            ours = max((r["tokens_per_s"] for r in rows if r["batch"] == b and r["variant"] == "after"),
                       default=0.0)
            hf_rows.append({"batch": b, "ms_per_step": t * 1e3, "tokens_per_s": b / t, "ours_over_hf": ours / (b / t)})
            print(f"transformers generate batch {b}: {t * 1e3:.2f} ms/step, {b / t:.1f} tok/s; ours/hf = {ours / (b / t):.2f}x", flush=True)
        res["transformers"] = hf_rows
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
