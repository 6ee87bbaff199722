"""Benchmark adaptive precision: per-precision error and speed, and what APS picks.

1. GEMM: fp8 (``torch._scaled_mm`` with row-wise scales on GPUs whose knowledge-base
   entry has fp8; the dequantised reference elsewhere) vs bf16/fp16/fp32 — time,
   TFLOPS and relative error against float32.
2. Model: the small LM trained by ``bench/small_lm.py`` (cached) with adaptive linear
   layers: calibrated relative logit error and forward time per precision, then the
   scheduler's choice for several error bounds (0.7% is the default).

    .venv/bin/python bench/bench_precision.py                # CPU
    .venv/bin/python bench/bench_precision.py --device cuda  # H200: real fp8
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import small_lm

from deepserve.engine.precision import (
    PrecisionScheduler,
    apply_adaptive_precision,
    fp8_hardware_support,
    fp8_linear,
    quantize_activation,
    quantize_weight,
    relative_error,
)
from deepserve.engine.precision.adaptive import DTYPES


def timed(fn, sync, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def gemm_table(device: str, sizes: list[int], repeats: int) -> None:
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    native, reason = fp8_hardware_support(device)
    print(f"\nGEMM [M,K] x [K,N], fp8 path: {'torch._scaled_mm' if native else 'reference'} ({reason})")
    print(f"{'M=K=N':>7}{'precision':>15}{'ms':>10}{'TFLOPS':>9}{'rel err':>10}")
    gen = torch.Generator(device=device).manual_seed(0)
    for n in sizes:
        x = torch.randn(n, n, device=device, generator=gen)
        w = torch.randn(n, n, device=device, generator=gen) / n**0.5
        exact = x @ w.t()
        master = torch.bfloat16 if cuda else torch.float32
        runs = {}
        for name in ("fp32", "bf16", "fp16"):
            dt = DTYPES[name]
            xd, wd = x.to(dt), w.to(dt)
            runs[name] = (lambda xd=xd, wd=wd: xd @ wd.t())
        q = quantize_weight(w.to(master))
        xm = x.to(master)
        runs["fp8"] = lambda xm=xm, q=q: fp8_linear(xm, q, None, use_scaled_mm=native)
        if native:  # the fp8 GEMM alone, activations already quantised
            xq, xs = quantize_activation(xm)
            runs["fp8 GEMM only"] = lambda xq=xq, xs=xs, q=q: torch._scaled_mm(
                xq, q.data.t(), scale_a=xs, scale_b=q.scale.t(), out_dtype=torch.bfloat16)
        for name, fn in runs.items():
            sec = timed(fn, sync, repeats)
            err = relative_error(fn().float(), exact)
            print(f"{n:>7}{name:>15}{sec * 1000:>10.3f}{2 * n**3 / sec / 1e12:>9.2f}{err:>10.5f}")


def model_table(args: argparse.Namespace) -> None:
    device = args.device
    model, stats = small_lm.train_small_lm(device, args.train_seconds, cache_dir=args.cache_dir)
    if device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    handle = apply_adaptive_precision(model, allow_reference_fp8=True)
    held = small_lm.held_out_batches(512, 4, device)
    calib, probe = held[:2], held[2:]

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        model.setup_caches(tokens.shape[0], tokens.shape[1])
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        return model(tokens, positions, torch.arange(tokens.shape[0], device=tokens.device))

    scheduler = PrecisionScheduler(handle, model.model.embed_tokens)
    with torch.inference_mode():
        cal = scheduler.calibrate(forward, calib)
        print(f"\nsmall LM ({stats['steps']:.0f} training steps), master {handle.state.master}, "
              f"weight copies +{handle.extra_bytes / 2**20:.1f} MiB")
        print(f"{'precision':>10}{'calibrated err':>16}{'ms/forward':>12}{'held-out err':>14}")
        for p in handle.precisions:
            ref = forward(probe[0]).float()
            with handle.use(p):
                err = relative_error(forward(probe[0]), ref)
            print(f"{p:>10}{cal.error[p]:>16.5f}{cal.seconds[p] * 1000:>12.2f}{err:>14.5f}")
        print(f"\n{'error bound':>12}{'choice (fastest measured)':>27}{'predicted err':>15}"
              f"{'choice (fp8<16-bit<fp32 cost)':>31}")
        costs = {"fp8": 1.0, "bf16": 2.0, "fp16": 2.0, "fp32": 4.0}
        for bound in (0.001, 0.007, 0.02, 0.1):
            scheduler.error_bound = bound
            scheduler.costs = None
            measured = scheduler.choose(probe[1])
            scheduler.costs = costs
            by_cost = scheduler.choose(probe[1])
            print(f"{bound:>12.3f}{measured.precision:>27}{measured.predicted_error:>15.5f}"
                  f"{by_cost.precision:>31}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--train-seconds", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/deepserve-bench"))
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.sizes = args.sizes or ([1024, 4096, 8192] if cuda else [256, 512])
    args.repeats = args.repeats or (20 if cuda else 3)
    args.train_seconds = args.train_seconds or (60.0 if cuda else 180.0)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    gemm_table(args.device, args.sizes, args.repeats)
    model_table(args)


if __name__ == "__main__":
    main()
