"""HAG's lightning-indexer scores for one query token per sequence, in one pass over the keys.

``I(s) = sum_h w_h * relu(q_h . k_s)`` for every cached indexer key ``k_s``. Written as
PyTorch ops this is a batched matmul into a float32 ``[B, heads, S]`` tensor, a ReLU and a
second contraction: three passes over a tensor several times larger than the keys. Here each
program reads a block of keys once, computes all heads' dot products on tensor cores and
writes only the weighted sum ``[B, S]`` (float32), so the cost is one read of the key cache.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from deepserve.engine.kernels.flash_decode import pow2, runs_on, tl, triton

BLOCK_S = 128  # keys per program under the interpreter; on GPUs autotuned (below)
TUNING = [(128, 4), (256, 4), (256, 8), (512, 8)]  # (keys per program, warps)
MAX_HEADS = 128
MAX_DIM = 256


def indexer_scores_supported(q: torch.Tensor, keys: torch.Tensor) -> bool:
    """``q`` [B, Hi, Dk] and ``keys`` [B, S, Dk] on a device the kernel runs on."""
    if not runs_on(q):
        return False
    return (q.dim() == 3 and keys.dim() == 3 and q.shape[0] == keys.shape[0]
            and q.shape[-1] == keys.shape[-1] <= MAX_DIM and q.shape[1] <= MAX_HEADS
            and q.dtype == keys.dtype)


def indexer_scores_reference(q: torch.Tensor, weights: torch.Tensor,
                             keys: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` float32: ``sum_h weights[b, h] * relu(q[b, h] . keys[b, s])`` in PyTorch."""
    logits = torch.einsum("bhd,bsd->bhs", q, keys).float().relu()
    return torch.einsum("bhs,bh->bs", logits, weights.float())


@functools.lru_cache(maxsize=1)
def _kernel() -> Any:
    @triton.jit
    def scores_kernel(Q, W, K, OUT, stride_qb, stride_qh, stride_wb, stride_kb, stride_ks,
                      stride_ob, rows, H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr,
                      DP: tl.constexpr, BLOCK: tl.constexpr, IEEE: tl.constexpr) -> None:
        b = tl.program_id(0)
        block = tl.program_id(1)
        h = tl.arange(0, HP)
        d = tl.arange(0, DP)
        s = block * BLOCK + tl.arange(0, BLOCK)
        live = s < rows
        q = tl.load(Q + b * stride_qb + h[:, None] * stride_qh + d[None, :],
                    mask=(h[:, None] < H) & (d[None, :] < D), other=0.0)
        w = tl.load(W + b * stride_wb + h, mask=h < H, other=0.0).to(tl.float32)
        k = tl.load(K + b * stride_kb + s[:, None] * stride_ks + d[None, :],
                    mask=live[:, None] & (d[None, :] < D), other=0.0)
        if IEEE:  # noqa: SIM108 - a constexpr branch, resolved when the kernel compiles
            logits = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            logits = tl.dot(q, tl.trans(k))  # [HP, BLOCK] float32
        score = tl.sum(tl.maximum(logits, 0.0) * w[:, None], 0)
        tl.store(OUT + b * stride_ob + s, score, mask=live)

    if os.environ.get("TRITON_INTERPRET") == "1":
        return scores_kernel
    # timed once per (heads, head size) on the first call, which must not be inside a CUDA
    # graph capture (warm-up runs come first everywhere the engine captures)
    return triton.autotune(
        configs=[triton.Config({"BLOCK": block}, num_warps=warps) for block, warps in TUNING],
        key=["H", "D"])(scores_kernel)



@torch.library.custom_op("deepserve::indexer_scores", mutates_args=())
def _indexer_scores_op(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    bsz, heads, dim = q.shape
    rows = keys.shape[1]
    q = q if q.stride(-1) == 1 else q.contiguous()
    keys = keys if keys.stride(-1) == 1 else keys.contiguous()
    weights = weights.contiguous()
    out = torch.empty(bsz, rows, dtype=torch.float32, device=q.device)
    kernel = _kernel()
    args = (q, weights, keys, out, q.stride(0), q.stride(1), weights.stride(0), keys.stride(0),
            keys.stride(1), out.stride(0), rows)
    shape = {"H": heads, "HP": pow2(heads, 16), "D": dim, "DP": pow2(dim, 16),
             "IEEE": q.dtype == torch.float32}
    if isinstance(kernel, triton.runtime.Autotuner):
        kernel[lambda meta: (bsz, triton.cdiv(rows, meta["BLOCK"]))](*args, **shape)
    else:
        kernel[(bsz, triton.cdiv(rows, BLOCK_S))](*args, **shape, BLOCK=BLOCK_S)
    return out


@_indexer_scores_op.register_fake
def _(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape[0], keys.shape[1], dtype=torch.float32)


def indexer_scores(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scores ``[B, S]`` (float32) of queries ``q`` [B, Hi, Dk] with head weights ``weights``
    [B, Hi] against ``keys`` [B, S, Dk]; see :func:`indexer_scores_reference`."""
    return _indexer_scores_op(q, weights, keys)
