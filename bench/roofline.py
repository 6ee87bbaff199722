"""Decode roofline with honest denominators (issue #19, item 1).

A decode step must read every weight once, except the token embedding: only the
`batch` rows looked up are read, not the whole table. It must also read the live KV
cache. The roofline divides those bytes by the H200's data-sheet HBM3e bandwidth,
4.8 TB/s (NVIDIA H200 Tensor Core GPU datasheet), not by a measured copy
bandwidth, which is lower (~4.27 TB/s) and would inflate "% of roofline".

Run `python bench/roofline.py docs/results/h200-decode-compiled.json` to re-derive
the figures of a raw bench_h200.py result with these denominators.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

H200_PEAK_BYTES_PER_S = 4.8e12


@dataclass(frozen=True)
class Shape:
    """The parts of a model shape that decide the bytes a decode step reads."""

    vocab: int
    dim: int
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    @property
    def embedding_bytes(self) -> int:
        """Bytes of the whole token-embedding table."""
        return self.vocab * self.dim * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V for one token over all layers."""
        return self.layers * 2 * self.kv_heads * self.head_dim * self.dtype_bytes


LLAMA_31_8B = Shape(vocab=128256, dim=4096, layers=32, kv_heads=8, head_dim=128)


def decode_step_bytes(shape: Shape, weight_bytes: int, batch: int, ctx: int) -> int:
    """Bytes one decode step must read: weights less the unread embedding rows, plus live KV."""
    if batch < 1 or ctx < 0 or weight_bytes < shape.embedding_bytes:
        raise ValueError(f"bad roofline input: batch={batch} ctx={ctx} weight_bytes={weight_bytes}")
    embedding_rows_read = batch * shape.dim * shape.dtype_bytes
    weights_read = weight_bytes - shape.embedding_bytes + min(embedding_rows_read, shape.embedding_bytes)
    return weights_read + batch * ctx * shape.kv_bytes_per_token


def roofline_tokens_per_s(shape: Shape, weight_bytes: int, batch: int, ctx: int,
                          bytes_per_s: float = H200_PEAK_BYTES_PER_S) -> float:
    """Output tokens/s if a step were bound only by reading its bytes at `bytes_per_s`."""
    return batch * bytes_per_s / decode_step_bytes(shape, weight_bytes, batch, ctx)


def rederive(result: dict[str, Any], shape: Shape, ctx: int) -> list[dict[str, Any]]:
    """Re-derive each decode row of a bench_h200.py JSON result against the data-sheet peak."""
    weight_bytes = round(result["weight_GB"] * 1e9)
    rows = []
    for r in result["decode"]:
        honest = roofline_tokens_per_s(shape, weight_bytes, r["batch"], ctx)
        rows.append({**r, "old_fraction": r["fraction_of_roofline"],
                     "peak_roofline_tokens_per_s": honest,
                     "fraction_of_peak_roofline": r["tokens_per_s"] / honest,
                     "achieved_TBps": r["tokens_per_s"] / r["batch"]
                     * decode_step_bytes(shape, weight_bytes, r["batch"], ctx) / 1e12})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print re-derived rows of one or more bench_h200.py JSON results (Llama-3.1-8B shape)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", nargs="+")
    p.add_argument("--ctx", type=int, default=512)
    a = p.parse_args(argv)
    for path in a.results:
        with open(path) as f:
            result = json.load(f)
        print(f"{path}: copy bandwidth {result['copy_bandwidth_GBps']:,.0f} GB/s, "
              f"peak {H200_PEAK_BYTES_PER_S / 1e9:,.0f} GB/s")
        print(f"{'variant':>8} {'batch':>5} {'mode':>9} {'tok/s':>9} {'old %':>7} "
              f"{'peak roof':>10} {'% peak':>7} {'TB/s':>6}")
        for r in rederive(result, LLAMA_31_8B, a.ctx):
            print(f"{r['variant']:>8} {r['batch']:>5} {r['mode']:>9} {r['tokens_per_s']:9.1f} "
                  f"{100 * r['old_fraction']:6.1f}% {r['peak_roofline_tokens_per_s']:10.1f} "
                  f"{100 * r['fraction_of_peak_roofline']:6.1f}% {r['achieved_TBps']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
