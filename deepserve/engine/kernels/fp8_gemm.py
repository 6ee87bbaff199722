"""fp8 helpers for adaptive precision: one-pass activation quantisation and a weight-only
fp8 GEMV for decode.

* :func:`quantize_rows` computes what ``precision.fp8.quantize_activation`` computes (per-row
  scale = max|x| / 448, values cast to E4M3) in one read of ``x``; as PyTorch ops it is about
  six passes, which at prefill sizes cost more than the fp8 GEMM saves.
* :func:`fp8_weight_gemv` multiplies a few activation rows (decode) by fp8 weights with
  per-output-channel scales, converting the weights to bf16 inside the kernel: it reads half
  the bytes of a bf16 GEMV, which is what decode is bound by. (``torch._scaled_mm`` needs the
  activations in fp8 too and is tuned for large M; at M = 1..64 it is slower than bf16.)
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from deepserve.engine.kernels.flash_decode import pow2, runs_on, tl, triton

FP8_MAX = 448.0
GEMV_MAX_ROWS = 16
GEMV_TUNING = [  # (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages)
    (64, 256, 1, 4, 4), (32, 256, 2, 4, 4), (64, 512, 2, 8, 3), (32, 512, 4, 4, 3),
    (128, 256, 1, 8, 4), (64, 256, 4, 4, 4), (16, 1024, 2, 4, 3), (32, 1024, 4, 8, 3),
    (16, 512, 8, 4, 4),
]


def quantize_rows_supported(x: torch.Tensor) -> bool:
    """2-D, rows of at most 32k elements, on CUDA. Not under the interpreter: its E4M3
    conversion rounds values near the top of a binade down a whole binade (124.3 -> 64),
    unlike the GPU's round-to-nearest-even; the kernel is tested on the GPU instead."""
    return (triton is not None and x.is_cuda and x.dim() == 2 and 0 < x.shape[1] <= 32768
            and x.shape[0] > 0)


def fp8_weight_gemv_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """``x`` [M <= 16, K] and an fp8 ``weight`` [N, K] on a device the kernel runs on."""
    return (runs_on(x) and x.dim() == 2 and 0 < x.shape[0] <= GEMV_MAX_ROWS
            and weight.dim() == 2 and weight.shape[1] == x.shape[1]
            and weight.dtype == torch.float8_e4m3fn)


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any]:
    @triton.jit
    def quant_kernel(X, XQ, SCALE, stride_x, stride_q, cols, BLOCK: tl.constexpr) -> None:
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        live = offs < cols
        x = tl.load(X + row * stride_x + offs, mask=live, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), 0), 1e-12) / 448.0
        tl.store(XQ + row * stride_q + offs, (x / scale).to(tl.float8e4nv), mask=live)
        tl.store(SCALE + row, scale)

    @triton.jit
    def gemv_kernel(X, W, WS, OUT, rows, n, k, stride_x, stride_w, stride_o,
                    MP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    SPLIT_K: tl.constexpr, ONE_ROW: tl.constexpr) -> None:
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        m = tl.arange(0, MP)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros([MP, BLOCK_N], tl.float32)
        per_split = tl.cdiv(tl.cdiv(k, BLOCK_K), SPLIT_K) * BLOCK_K
        start = split * per_split
        end = tl.minimum(start + per_split, k)
        for k0 in range(start, end, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            kmask = kk < end
            w = tl.load(W + cols[:, None] * stride_w + kk[None, :],
                        mask=(cols[:, None] < n) & kmask[None, :], other=0.0)
            if ONE_ROW:  # batch 1: multiply-add on CUDA cores, no padded tensor-core tile
                x1 = tl.load(X + kk, mask=kmask, other=0.0).to(tl.float32)
                part = tl.sum(w.to(tl.float32) * x1[None, :], 1)  # [BLOCK_N]
                acc += tl.where(m[:, None] == 0, part[None, :], 0.0)
            else:
                x = tl.load(X + m[:, None] * stride_x + kk[None, :],
                            mask=(m[:, None] < rows) & kmask[None, :], other=0.0)
                acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        scale = tl.load(WS + cols, mask=cols < n, other=0.0)
        acc = acc * scale[None, :]
        out = OUT + split * rows * stride_o + m[:, None] * stride_o + cols[None, :]
        tl.store(out, acc, mask=(m[:, None] < rows) & (cols[None, :] < n))

    if os.environ.get("TRITON_INTERPRET") != "1":
        gemv_kernel = triton.autotune(
            configs=[triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=w,
                                   num_stages=s) for bn, bk, sk, w, s in GEMV_TUNING],
            key=["n", "k", "ONE_ROW"], reset_to_zero=["OUT"])(gemv_kernel)
    return quant_kernel, gemv_kernel



@torch.library.custom_op("deepserve::quantize_rows", mutates_args=())
def _quantize_rows_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x if x.stride(-1) == 1 else x.contiguous()
    rows, cols = x.shape
    xq = torch.empty(rows, cols, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    block = pow2(cols, 16)
    _kernels()[0][(rows,)](x, xq, scale, x.stride(0), xq.stride(0), cols, BLOCK=block,
                           num_warps=8 if block >= 4096 else 4)
    return xq, scale


@_quantize_rows_op.register_fake
def _(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty_like(x, dtype=torch.float8_e4m3fn),
            x.new_empty(x.shape[0], 1, dtype=torch.float32))


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fp8 [M, K], scale [M, 1] float32)`` with ``x ~= fp8 * scale`` per row, one pass."""
    return _quantize_rows_op(x)


@torch.library.custom_op("deepserve::fp8_weight_gemv", mutates_args=())
def _fp8_gemv_op(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    x = x if x.stride(-1) == 1 else x.contiguous()
    rows, k = x.shape
    n = weight.shape[0]
    scale = scale.reshape(-1).float().contiguous()
    kernel = _kernels()[1]
    if isinstance(kernel, triton.runtime.Autotuner):
        max_split = max(c.kwargs["SPLIT_K"] for c in kernel.configs)
        partial = torch.zeros(max_split, rows, n, dtype=torch.float32, device=x.device)
        kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])](
            x, weight, scale, partial, rows, n, k, x.stride(0), weight.stride(0), n, MP=16,
            ONE_ROW=rows == 1)
    else:
        partial = torch.zeros(1, rows, n, dtype=torch.float32, device=x.device)
        kernel[(triton.cdiv(n, 32), 1)](x, weight, scale, partial, rows, n, k, x.stride(0),
                                        weight.stride(0), n, MP=16, BLOCK_N=32, BLOCK_K=64,
                                        SPLIT_K=1, ONE_ROW=rows == 1)
    return partial.sum(0).to(x.dtype)


@_fp8_gemv_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


def fp8_weight_gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x [M, K] @ (weight [N, K] fp8 * scale [N, 1]).T`` in ``x``'s dtype, for M <= 16."""
    return _fp8_gemv_op(x, weight, scale)
