"""Benchmark hierarchical attention gating (HAG): quality and decode cost.

1. Quality: a small byte-level Llama is trained here on the Python standard library's
   sources (``bench/small_lm.py``, bounded wall time), its indexers are distilled from
   its own dense attention, and held-out perplexity is compared dense vs sparse on the
   second half of each window (context >= context/2 tokens, well above the budgets).
   A local-only row (sinks + sliding window with the same budget, StreamingLLM-style)
   shows what the indexer adds; a random-indexer row shows what distillation adds.
2. Decode: per-step latency and KV entries read, dense vs sparse, at growing contexts.
   Cost does not depend on values, so weights and the KV/indexer caches are random
   (the caches are filled directly instead of prefilled).

    .venv/bin/python bench/bench_sparse.py                # CPU, ~4-5 min incl. training
    .venv/bin/python bench/bench_sparse.py --device cuda  # H200, < 2 min
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import small_lm

from deepserve.engine.generate import decode_step
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.options import SparseAttentionOptions
from deepserve.engine.prefix_cache import cache_buffers
from deepserve.engine.sparse import allocate_indexer_caches, apply_sparse_attention
from deepserve.engine.sparse.distill import attention_recall, distill_indexers

log = logging.getLogger("bench_sparse")


def perplexity(model: Transformer, batches: list[torch.Tensor], skip: int) -> float:
    """exp(mean NLL) over positions >= ``skip`` of every window."""
    nll, count = 0.0, 0
    with torch.inference_mode():
        for tokens in batches:
            seqlen = tokens.shape[1]
            model.setup_caches(1, seqlen)
            logits = model(tokens, torch.arange(seqlen, device=tokens.device)[None],
                           torch.zeros(1, dtype=torch.long, device=tokens.device))
            logp = logits[0, skip:-1].float().log_softmax(-1)
            target = tokens[0, skip + 1:]
            nll -= float(logp.gather(-1, target[:, None]).sum())
            count += int(target.numel())
    return math.exp(nll / count)


def sparse_row(model: Transformer, batches: list[torch.Tensor], opts: SparseAttentionOptions,
               skip: int) -> tuple[float, float, float]:
    """(perplexity, fraction of KV entries read, attention recall) with ``opts``."""
    handle = apply_sparse_attention(model, opts)
    ppl = perplexity(model, batches, skip)
    stats = handle.stats()
    handle.remove()
    recall = attention_recall(model, torch.cat(batches[:2]), opts.top_k, opts.sinks,
                              opts.local_window)
    return ppl, stats["read_fraction"], recall


def quality(args: argparse.Namespace) -> None:
    device = args.device
    model, train_stats = small_lm.train_small_lm(device, args.train_seconds, args.context,
                                                 cache_dir=args.cache_dir)
    held = small_lm.held_out_batches(args.context, args.eval_windows, device)
    skip = args.context // 2
    dense = perplexity(model, held, skip)
    print(f"\nsmall LM: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{train_stats['steps']:.0f} steps / {train_stats['tokens'] / 1e6:.2f}M bytes of stdlib "
          f"source in {train_stats['seconds']:.0f}s, final train loss {train_stats['final_loss']:.3f}")
    rows: list[tuple[str, int, float, float, float]] = [("dense", args.context, dense, 1.0, 1.0)]
    window = args.window
    local_only = SparseAttentionOptions(True, top_k=1, sinks=4, local_window=window + args.budgets[1] - 1)
    ppl, frac, rec = sparse_row(model, held, local_only, skip)
    rows.append((f"local only (sinks 4 + window {local_only.local_window})",
                 1 + 4 + local_only.local_window, ppl, frac, rec))
    mid = SparseAttentionOptions(True, top_k=args.budgets[1], sinks=4, local_window=window)
    ppl, frac, rec = sparse_row(model, held, mid, skip)  # indexers still random here
    rows.append((f"HAG k={mid.top_k}, random indexer", mid.top_k + 4 + window, ppl, frac, rec))
    train, _ = small_lm.split(small_lm.corpus_bytes())
    gen = torch.Generator().manual_seed(1)
    offsets = torch.randint(0, len(train) - args.context, (10_000,), generator=gen).tolist()
    batches = (torch.stack([train[o:o + args.context] for o in offsets[i:i + 2]]).to(device)
               for i in range(0, len(offsets), 2))
    report = distill_indexers(model, batches, lr=3e-3, max_seconds=args.distill_seconds)
    print(f"indexer distillation: {report.steps} steps in {report.seconds:.0f}s, "
          f"KL {report.first_kl:.3f} -> {report.last_kl:.3f}")
    for k in args.budgets:
        opts = SparseAttentionOptions(True, top_k=k, sinks=4, local_window=window)
        ppl, frac, rec = sparse_row(model, held, opts, skip)
        rows.append((f"HAG k={k} + sinks 4 + window {window}", k + 4 + window, ppl, frac, rec))
    print(f"\nheld-out perplexity (bytes), {len(held)} windows of {args.context}, "
          f"scored positions {skip}..{args.context - 1}")
    print(f"{'attention':<44}{'budget':>7}{'ppl':>9}{'dppl%':>8}{'KV read':>9}{'recall':>8}")
    for name, budget, ppl, frac, rec in rows:
        print(f"{name:<44}{budget:>7}{ppl:>9.3f}{100 * (ppl / dense - 1):>8.2f}"
              f"{frac:>9.3f}{rec:>8.3f}")


def decode_args(device: str) -> ModelArgs:
    big = device.startswith("cuda")
    return ModelArgs(architecture="llama", vocab_size=1024, hidden_size=2048 if big else 512,
                     intermediate_size=4096 if big else 1024, num_layers=4 if big else 2,
                     num_heads=16 if big else 8, num_kv_heads=8, head_dim=128 if big else 64,
                     max_position_embeddings=1 << 18)


def graph_ms(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor,
             steps: int) -> float:
    """ms per decode step replayed from a CUDA graph (no launch or Python overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            decode_step(model, tokens, positions)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step(model, tokens, positions)
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / steps


def decode_cost(args: argparse.Namespace) -> None:
    device = args.device
    margs = decode_args(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    model = Transformer(margs).to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    opts = SparseAttentionOptions(True, top_k=args.decode_top_k, sinks=4, local_window=args.window)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    kv_bytes = 2 * margs.num_kv_heads * margs.head_dim * torch.finfo(dtype).bits // 8
    print(f"\ndecode step, {margs.num_layers} layers, {margs.num_kv_heads} KV "
          f"heads x {margs.head_dim}, {dtype}, sparse top_k {opts.top_k} + 4 + {opts.local_window}")
    cuda = device.startswith("cuda")
    graphs = f"{'graph: dense':>14}{'HAG':>7}{'speedup':>9}" if cuda else ""
    print(f"{'batch':>6}{'context':>8}{'dense ms':>10}{'HAG ms':>9}{'speedup':>9}{graphs}"
          f"{'KV rows/step dense':>20}{'HAG':>8}{'KV MiB/step dense':>19}{'HAG':>8}")
    for shape in args.shapes:
        batch, context = (int(v) for v in shape.split("x"))
        results = []
        for sparse in (False, True):
            handle = apply_sparse_attention(model, opts) if sparse else None
            model.setup_caches(batch, context + args.steps + 1)
            allocate_indexer_caches(model)
            with torch.inference_mode():
                for buf in cache_buffers(model, batch, context + args.steps + 1):
                    buf.normal_()
                tokens = torch.zeros(batch, dtype=torch.long, device=device)
                positions = torch.full((batch,), context, dtype=torch.long, device=device)
                decode_step(model, tokens, positions)  # warm-up
                if handle is not None:
                    handle.counters.reset()
                sync()
                start_t = time.perf_counter()
                for i in range(args.steps):
                    decode_step(model, tokens, positions + 1 + i)
                sync()
            ms = (time.perf_counter() - start_t) * 1000 / args.steps
            rows = (handle.stats()["kv_entries_read"] / args.steps if handle
                    else batch * margs.num_layers * (context + 1))
            gms = 0.0
            if cuda:
                if handle is not None:
                    handle.set_sync_free(True)  # capturable: no host sync in the step
                with torch.inference_mode():
                    gms = graph_ms(model, tokens, positions, args.steps)
            results.append((ms, rows, gms))
            if handle is not None:
                handle.remove()
        (dms, drows, dgms), (sms, srows, sgms) = results
        graph_cols = f"{dgms:>14.2f}{sgms:>7.2f}{dgms / sgms:>9.2f}" if cuda else ""
        print(f"{batch:>6}{context:>8}{dms:>10.2f}{sms:>9.2f}{dms / sms:>9.2f}{graph_cols}"
              f"{drows:>20.0f}{srows:>8.0f}"
              f"{drows * kv_bytes / 2**20:>19.2f}{srows * kv_bytes / 2**20:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-seconds", type=float, default=None)
    parser.add_argument("--distill-seconds", type=float, default=None)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--budgets", type=int, nargs=3, default=[16, 32, 64])
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--shapes", nargs="+", default=None, help="BATCHxCONTEXT, e.g. 16x8192")
    parser.add_argument("--decode-top-k", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/deepserve-bench"))
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.train_seconds = args.train_seconds or (60.0 if cuda else 180.0)
    args.distill_seconds = args.distill_seconds or (15.0 if cuda else 45.0)
    args.shapes = args.shapes or (["16x8192", "16x32768", "16x131072", "64x65536"] if cuda
                                  else ["1x1024", "1x4096", "1x16384", "4x16384"])
    args.decode_top_k = args.decode_top_k or (2048 if cuda else 128)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    if not args.skip_quality:
        quality(args)
    if not args.skip_decode:
        decode_cost(args)


if __name__ == "__main__":
    main()
