"""Decode and 1000/1000 throughput as a long-lived server sees them (issue #19, items 1-2).

One process, one model (random weights, Llama-3.1-8B shape, bf16), one
:class:`~deepserve.engine.decode_graphs.BucketedDecoder` (the engine's decode path:
compiled once with a dynamic batch dimension, one CUDA graph per bucket, captured at
warm-up). In order:

1. copy bandwidth (device-to-device, read + write), 3 runs;
2. warm-up: compile + capture every bucket, timed;
3. **fresh**: decode tok/s at batch 1, 8, 64 (context 512) and the 1000/1000 throughput
   (``--seqs`` sequences, prompts prefilled 16 per forward), each ``--runs`` times;
4. **mixed serving**: every batch size 1..seqs in random order at random context lengths,
   with prefills of random lengths between them — what a server sees in a day;
5. **after**: the same figures as 3 again, in the same process.

Rooflines divide the bytes a step must read (weights less the unread embedding rows, plus
live KV; bench/roofline.py) by the H200 data-sheet 4.8 TB/s, with the measured copy
bandwidth beside it. Every figure is the median and range of ``--runs`` runs.

    python3 bench/bench_serving.py --out serving.json     # on the GPU machine
    python3 bench/bench_serving.py --tiny --device cpu     # smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_h200 import LLAMA_8B, TINY, build_random, copy_bandwidth, param_bytes, sync
from roofline import H200_PEAK_BYTES_PER_S, Shape, decode_step_bytes

from deepserve.engine.decode_graphs import BucketedDecoder
from deepserve.engine.generate import prefill_batch
from deepserve.engine.model.transformer import Transformer


def spread(values: list[float]) -> dict[str, Any]:
    """Median and range of repeated runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def fmt(s: dict[str, Any], digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def shape_of(model: Transformer, dtype_bytes: int) -> Shape:
    a = model.args
    return Shape(vocab=a.vocab_size, dim=a.hidden_size, layers=a.num_layers,
                 kv_heads=a.num_kv_heads, head_dim=a.head_dim, dtype_bytes=dtype_bytes)


def decode_rate(decoder: BucketedDecoder, batch: int, ctx: int, steps: int, device: str,
                vocab: int) -> float:
    """Tokens/s of ``steps`` decode steps of the first ``batch`` slots at context ``ctx``."""
    tokens = torch.randint(0, vocab, (batch,), device=device)
    positions = torch.full((batch,), ctx, device=device, dtype=torch.long)
    for _ in range(3):
        decoder(tokens, positions)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        decoder(tokens, positions)
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def throughput(model: Transformer, decoder: BucketedDecoder, seqs: int, length: int,
               device: str, prefill_at_once: int, gen: torch.Generator) -> dict[str, float]:
    """Prefill ``seqs`` prompts of ``length`` tokens, then decode ``length`` tokens for all."""
    vocab = model.args.vocab_size
    prompts = torch.randint(0, vocab, (seqs, length), device=device, generator=gen)
    sync(device)
    t0 = time.perf_counter()
    last = []
    for first in range(0, seqs, prefill_at_once):
        rows = list(range(first, min(seqs, first + prefill_at_once)))
        last.append(prefill_batch(model, [prompts[i] for i in rows], rows).argmax(-1))
    sync(device)
    t_prefill = time.perf_counter() - t0
    tokens = torch.cat(last)
    positions = torch.full((seqs,), length, device=device, dtype=torch.long)
    t0 = time.perf_counter()
    for _ in range(length):
        tokens = decoder(tokens, positions).argmax(-1)
        positions += 1
    sync(device)
    t_decode = time.perf_counter() - t0
    total = t_prefill + t_decode
    return {"prefill_s": t_prefill, "decode_s": t_decode,
            "output_tokens_per_s": seqs * length / total,
            "decode_tokens_per_s": seqs * length / t_decode,
            "prefill_tokens_per_s": seqs * length / t_prefill}


def mixed_serving(model: Transformer, decoder: BucketedDecoder, seqs: int, max_ctx: int,
                  device: str, rng: random.Random) -> dict[str, Any]:
    """Every batch size 1..seqs in random order, 2 steps each at random context lengths,
    and a prefill of random-length prompts into random slots after every 16 sizes."""
    vocab = model.args.vocab_size
    sizes = list(range(1, seqs + 1))
    rng.shuffle(sizes)
    captured = len(decoder.capture_seconds)
    t0 = time.perf_counter()
    steps = prefills = 0
    for i, n in enumerate(sizes):
        tokens = torch.randint(0, vocab, (n,), device=device)
        positions = torch.tensor([rng.randrange(1, max_ctx) for _ in range(n)], device=device)
        for _ in range(2):
            decoder(tokens, positions).argmax(-1)
            steps += 1
        if i % 16 == 15:
            slots = rng.sample(range(seqs), min(4, seqs))
            prompts = [torch.randint(0, vocab, (rng.randrange(8, max_ctx // 2),), device=device)
                       for _ in slots]
            prefill_batch(model, prompts, slots)
            prefills += 1
    sync(device)
    return {"batch_sizes": len(sizes), "steps": steps, "prefills": prefills,
            "seconds": time.perf_counter() - t0,
            "new_captures": len(decoder.capture_seconds) - captured,
            "steps_per_bucket": dict(sorted(decoder.steps_per_bucket.items()))}


def measure(model: Transformer, decoder: BucketedDecoder, a: argparse.Namespace, bw: float,
            wbytes: int, shape: Shape, gen: torch.Generator, label: str) -> dict[str, Any]:
    """Decode rows and throughput, ``a.runs`` times each."""
    out: dict[str, Any] = {"decode": [], "throughput": None}
    for b in a.batch:
        rates = [decode_rate(decoder, b, a.ctx, a.steps, a.device, model.args.vocab_size)
                 for _ in range(a.runs)]
        step_bytes = decode_step_bytes(shape, wbytes, b, a.ctx)
        peak_roof = b * H200_PEAK_BYTES_PER_S / step_bytes
        copy_roof = b * bw / step_bytes
        row = {"batch": b, "ctx": a.ctx, "tokens_per_s": spread(rates), "step_bytes": step_bytes,
               "peak_roofline_tokens_per_s": peak_roof, "copy_roofline_tokens_per_s": copy_roof,
               "fraction_of_peak": spread([r / peak_roof for r in rates]),
               "fraction_of_copy": spread([r / copy_roof for r in rates]),
               "achieved_TBps": spread([r / b * step_bytes / 1e12 for r in rates])}
        out["decode"].append(row)
        print(f"[{label}] decode b{b} ctx {a.ctx}: {fmt(row['tokens_per_s'], 1)} tok/s; "
              f"{100 * row['fraction_of_peak']['median']:.1f}% of the 4.8 TB/s roofline "
              f"({peak_roof:,.1f}), {100 * row['fraction_of_copy']['median']:.1f}% of the copy "
              f"roofline ({copy_roof:,.1f}); {row['achieved_TBps']['median']:.2f} TB/s", flush=True)
    runs = [throughput(model, decoder, a.seqs, a.len, a.device, a.prefill_batch, gen)
            for _ in range(a.runs)]
    out["throughput"] = {key: spread([r[key] for r in runs]) for key in runs[0]}
    t = out["throughput"]
    print(f"[{label}] {a.seqs} seqs {a.len}/{a.len}: {fmt(t['output_tokens_per_s'])} output tok/s "
          f"(decode alone {fmt(t['decode_tokens_per_s'])}; prefill {fmt(t['prefill_s'], 2)} s, "
          f"decode {fmt(t['decode_s'], 2)} s)", flush=True)
    return out


def save(res: dict[str, Any], path: str) -> None:
    """Write what is measured so far (a run cut short keeps its earlier sections)."""
    if path:
        with open(path, "w") as fh:
            json.dump(res, fh, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Run the sections in order; print a summary and write JSON (``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--seqs", type=int, default=256)
    ap.add_argument("--len", type=int, default=1000)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 8, 64])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prefill-batch", type=int, default=16)
    ap.add_argument("--no-compile", action="store_true", help="CUDA graphs of the eager step")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    if a.tiny:
        a.seqs, a.len, a.steps, a.batch, a.ctx = min(a.seqs, 8), min(a.len, 16), 4, [1, 2], 8
    dev, cuda = a.device, a.device == "cuda"
    res: dict[str, Any] = {"torch": torch.__version__, "argv": sys.argv[1:],
                           "gpu": torch.cuda.get_device_name() if cuda else "cpu"}
    bws = [copy_bandwidth(dev, 4.0 if cuda else 0.05) for _ in range(3)]
    bw = statistics.median(bws)
    res["copy_bandwidth_GBps"] = spread([b / 1e9 for b in bws])
    print(f"copy bandwidth (read+write): {fmt(res['copy_bandwidth_GBps'])} GB/s; data-sheet peak "
          f"{H200_PEAK_BYTES_PER_S / 1e9:,.0f} GB/s", flush=True)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_random(TINY if a.tiny else LLAMA_8B, dev, dtype)
    model.fuse_projections()
    wbytes = param_bytes(model)
    shape = shape_of(model, 2 if cuda else 4)
    res["weight_GB"] = wbytes / 1e9
    model.setup_caches(a.seqs, 2 * a.len + 8)
    decoder = BucketedDecoder(model, a.seqs, compile=cuda and not a.no_compile, graphs=cuda)
    res["buckets"] = list(decoder.buckets)
    gen = torch.Generator(device=dev).manual_seed(0)
    rng = random.Random(0)
    with torch.inference_mode():
        res["warm_up_s"] = decoder.warm_up()
        res["capture_s"] = {f"{k}/{b}": s for (k, b), s in decoder.capture_seconds.items()}
        res["graph_failures"] = decoder.graph_failures
        res["dynamo_unique_graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        print(f"warm-up: buckets {decoder.buckets} compiled and captured in {res['warm_up_s']:.1f} s "
              f"({res['dynamo_unique_graphs']} compiled graphs)"
              f"{'; FAILURES ' + str(decoder.graph_failures) if decoder.graph_failures else ''}", flush=True)
        save(res, a.out)
        res["fresh"] = measure(model, decoder, a, bw, wbytes, shape, gen, "fresh")
        save(res, a.out)
        res["mixed"] = mixed_serving(model, decoder, a.seqs, 2 * a.len, dev, rng)
        print(f"mixed serving: {res['mixed']}", flush=True)
        res["after"] = measure(model, decoder, a, bw, wbytes, shape, gen, "after")
    fresh, after = res["fresh"]["throughput"], res["after"]["throughput"]
    ratio = after["output_tokens_per_s"]["median"] / fresh["output_tokens_per_s"]["median"]
    res["after_over_fresh"] = ratio
    print(f"after mixed serving / fresh, 1000/1000 output tok/s: {ratio:.3f} (goal >= 0.95)")
    for f_row, a_row in zip(res["fresh"]["decode"], res["after"]["decode"], strict=True):
        print(f"decode b{f_row['batch']}: fresh {fmt(f_row['tokens_per_s'], 1)}, after "
              f"{fmt(a_row['tokens_per_s'], 1)} tok/s; peak roofline {f_row['peak_roofline_tokens_per_s']:,.1f}")
    save(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
