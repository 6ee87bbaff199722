"""Flash-decoding attention for one query token per sequence, dense or over selected rows.

Decode attention is a memory-bound read of the KV cache. PyTorch's SDPA with a mask over a
static cache reads every cache row of every slot (and, with grouped KV heads and a mask,
falls back to kernels that expand K/V per query head). This kernel reads each K/V row once
per KV head and only the rows a sequence has:

* **dense**: rows ``0 .. lengths[b]-1`` of slot ``b`` (the causal context of a decode step);
* **sparse**: rows ``index[b, j]`` where ``valid[b, j]`` (HAG's top-k selection), gathered
  inside the kernel, so no gathered copy of K/V is ever written.

The cache may be stored in fp8 (E4M3, unit scale): rows are converted to the query's dtype
in registers after the load, so a step reads half the bytes of a bf16 cache.

Work is split along the sequence (flash-decoding): program ``(b, kv_head, split)`` keeps the
query heads of one KV-head group as a small matrix (tensor-core ``dot`` even at one query
token), runs an online softmax over its chunk and writes a partial ``(max, sum, acc)``; a
second kernel combines the splits. The number of splits depends only on shapes, so the
launch is the same every step and can be captured in a CUDA graph. Softmax and
accumulation are float32; products in the cache dtype, like FlashAttention.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch

try:  # CPU-only installs may lack Triton; the kernels are then never chosen
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = tl = None

BLOCK_N = 64  # cache rows per inner iteration
MAX_HEAD_DIM = 256
MAX_GROUP = 64  # query heads per KV head the kernel keeps in registers


FP8_KV = torch.float8_e4m3fn  # the fp8 KV-cache storage type (unit scale)

RUN_ON_CPU = False  # tests set it: run on CPU tensors through Triton's interpreter


def _interpreting() -> bool:
    """CPU tensors allowed: the interpreter is on (set before Triton's import) and opted in."""
    return RUN_ON_CPU and os.environ.get("TRITON_INTERPRET") == "1"


def runs_on(t: torch.Tensor) -> bool:
    """Whether this package's kernels can run on ``t``'s device (CUDA, or the interpreter)."""
    return triton is not None and (t.is_cuda or _interpreting())


def decode_attention_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`decode_attention` handles these shapes on this device.

    ``q`` [B, H, D], ``k`` [B, Hkv, S, D], ``v`` [B, Hkv, S, Dv]: needs Triton, a CUDA
    device (or the Triton interpreter), D and Dv at most 256 and at most 64 query heads per
    KV head (MLA's 576-wide latent keys with all heads on one KV head fall back); K and V
    in the query's dtype or both in fp8 E4M3 (:data:`FP8_KV`).
    """
    if not runs_on(q):
        return False
    if q.dim() != 3 or k.dim() != 4 or v.dim() != 4 or k.shape[1] == 0:
        return False
    heads, kv_heads = q.shape[1], k.shape[1]
    return (heads % kv_heads == 0 and heads // kv_heads <= MAX_GROUP
            and q.shape[-1] == k.shape[-1] <= MAX_HEAD_DIM and v.shape[-1] <= MAX_HEAD_DIM
            and k.dtype == v.dtype and k.dtype in (q.dtype, FP8_KV)
            and q.shape[0] == k.shape[0] == v.shape[0])


def decode_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               lengths: torch.Tensor | None, scale: float,
                               index: torch.Tensor | None = None,
                               valid: torch.Tensor | None = None) -> torch.Tensor:
    """What :func:`decode_attention` computes, in plain PyTorch (float32 softmax)."""
    bsz, heads, _ = q.shape
    kv_heads, rows = k.shape[1], k.shape[2]
    group = heads // kv_heads
    qf = q.float().view(bsz, kv_heads, group, -1)
    if index is None:
        assert lengths is not None
        allowed = torch.arange(rows, device=q.device)[None] < lengths[:, None]  # [B, S]
        kf, vf = k.float(), v.float()
    else:
        allowed = torch.ones_like(index, dtype=torch.bool) if valid is None else valid.bool()
        take = index[:, None, :, None]
        kf = k.gather(2, take.expand(-1, kv_heads, -1, k.shape[-1])).float()
        vf = v.gather(2, take.expand(-1, kv_heads, -1, v.shape[-1])).float()
    logits = torch.einsum("bkgd,bksd->bkgs", qf, kf) * scale
    logits = logits.masked_fill(~allowed[:, None, None], -math.inf)
    out = torch.einsum("bkgs,bksd->bkgd", logits.softmax(-1), vf)  # fp8 caches: exact widening
    return out.reshape(bsz, heads, -1).to(q.dtype)


@functools.lru_cache(maxsize=8)
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _splits(bsz: int, kv_heads: int, rows: int, device: torch.device) -> tuple[int, int]:
    """(splits, rows per split): about two programs per multiprocessor, chunks of BLOCK_N."""
    blocks = max(1, -(-rows // BLOCK_N))
    want = max(1, -(-2 * _multiprocessors(device) // (bsz * kv_heads)))
    splits = min(blocks, want)
    chunk = -(-blocks // splits) * BLOCK_N
    return -(-rows // chunk), chunk


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any]:
    """Compile (or, under TRITON_INTERPRET=1, interpret) the two kernels on first use.

    Defined lazily so the interpreter setting is read when they are first needed; they use
    the module-level ``tl``, which is what the interpreter patches.
    """
    @triton.jit
    def partial_kernel(Q, K, V, LENS, INDEX, VALID, TABLE, ACC, MAX, SUM,
                       stride_qb, stride_qh, stride_kb, stride_kh, stride_ks,
                       stride_vb, stride_vh, stride_vs, stride_ib, stride_tb, heads, chunk, scale,
                       G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                       DV: tl.constexpr, DVP: tl.constexpr, SPLITS: tl.constexpr,
                       BLOCK: tl.constexpr, HAS_INDEX: tl.constexpr, IEEE: tl.constexpr,
                       KV_FP8: tl.constexpr, PAGED: tl.constexpr, PAGE: tl.constexpr) -> None:
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        n = tl.load(LENS + b)
        start = split * chunk
        end = tl.minimum(start + chunk, n)
        g = tl.arange(0, GP)
        d = tl.arange(0, DP)
        dv = tl.arange(0, DVP)
        head = kvh * G + g
        gmask = g < G
        q = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + d[None, :],
                    mask=gmask[:, None] & (d[None, :] < D), other=0.0)
        m_i = tl.full([GP], float("-inf"), tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, DVP], tl.float32)
        if PAGED:  # K/V are block pools [blocks, Hkv, PAGE, D]; TABLE maps row // PAGE
            k_base = K + kvh * stride_kh
            v_base = V + kvh * stride_vh
        else:
            k_base = K + b * stride_kb + kvh * stride_kh
            v_base = V + b * stride_vb + kvh * stride_vh
        for s0 in range(start, end, BLOCK):
            offs = s0 + tl.arange(0, BLOCK)
            ok = offs < end
            if HAS_INDEX:
                rows = tl.load(INDEX + b * stride_ib + offs, mask=ok, other=0)
                ok = ok & (tl.load(VALID + b * stride_ib + offs, mask=ok, other=0) != 0)
            else:
                rows = offs
            if PAGED:
                blk = tl.load(TABLE + b * stride_tb + rows // PAGE, mask=ok, other=0).to(tl.int64)
                k_off = blk * stride_kb + (rows % PAGE) * stride_ks
                v_off = blk * stride_vb + (rows % PAGE) * stride_vs
            else:
                k_off = rows * stride_ks
                v_off = rows * stride_vs
            kt = tl.load(k_base + k_off[:, None] + d[None, :],
                         mask=ok[:, None] & (d[None, :] < D), other=0.0)
            if KV_FP8:  # fp8 rows widened in registers
                kt = kt.to(q.dtype)
            if IEEE:  # float32 caches: exact float32 products, not TF32
                s = tl.dot(q, tl.trans(kt), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(kt)) * scale  # [GP, BLOCK] float32
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing yet
            alpha = tl.exp(m_i - m_use)
            p = tl.exp(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vt = tl.load(v_base + v_off[:, None] + dv[None, :],
                         mask=ok[:, None] & (dv[None, :] < DV), other=0.0)
            if KV_FP8:
                vt = vt.to(q.dtype)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, vt, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
            m_i = m_new
        out = (b * heads + head) * SPLITS + split
        tl.store(ACC + out[:, None] * DVP + dv[None, :], acc, mask=gmask[:, None])
        tl.store(MAX + out, m_i, mask=gmask)
        tl.store(SUM + out, l_i, mask=gmask)

    @triton.jit
    def combine_kernel(ACC, MAX, SUM, OUT, stride_ob, stride_oh, heads,
                       SPLITS: tl.constexpr, SP: tl.constexpr, DV: tl.constexpr,
                       DVP: tl.constexpr) -> None:
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.arange(0, SP)
        dv = tl.arange(0, DVP)
        base = (b * heads + h) * SPLITS
        live = s < SPLITS
        m = tl.load(MAX + base + s, mask=live, other=float("-inf"))
        l_s = tl.load(SUM + base + s, mask=live, other=0.0)
        top = tl.max(m, 0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
        acc = tl.load(ACC + (base + s)[:, None] * DVP + dv[None, :], mask=live[:, None], other=0.0)
        num = tl.sum(acc * w[:, None], 0)
        den = tl.sum(l_s * w, 0)
        res = num / den
        tl.store(OUT + b * stride_ob + h * stride_oh + dv, res.to(OUT.dtype.element_ty), mask=dv < DV)

    return partial_kernel, combine_kernel


def pow2(n: int, floor: int = 1) -> int:
    """The smallest power of two >= ``n`` and >= ``floor`` (Triton block sizes)."""
    return max(floor, 1 << (max(1, n) - 1).bit_length())


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
            scale: float, index: torch.Tensor | None, valid: torch.Tensor | None,
            table: torch.Tensor | None = None, page: int = 1) -> torch.Tensor:
    partial_kernel, combine_kernel = _kernels()
    bsz, heads, dim = q.shape
    kv_heads, dim_v = k.shape[1], v.shape[-1]
    group = heads // kv_heads
    q = q if q.stride(-1) == 1 else q.contiguous()
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    rows = index.shape[1] if index is not None else (
        table.shape[1] * page if table is not None else k.shape[2])
    splits, chunk = _splits(bsz, kv_heads, rows, q.device)
    dvp = pow2(dim_v, 16)
    acc = torch.empty(bsz * heads * splits * dvp, dtype=torch.float32, device=q.device)
    mx = torch.empty(bsz * heads * splits, dtype=torch.float32, device=q.device)
    sm = torch.empty_like(mx)
    if index is not None:
        index = index.contiguous()
        valid = (torch.ones_like(index, dtype=torch.uint8) if valid is None
                 else valid.contiguous().view(torch.uint8) if valid.dtype == torch.bool
                 else valid.contiguous())
        lens = torch.full((bsz,), rows, dtype=torch.int32, device=q.device)
    else:
        lens = lengths if lengths.dtype == torch.int32 else lengths.to(torch.int32)
    if table is not None:
        table = table if table.dtype == torch.int32 and table.stride(-1) == 1 else (
            table.to(torch.int32).contiguous())
    partial_kernel[(bsz, kv_heads, splits)](
        q, k, v, lens, index if index is not None else lens, valid if valid is not None else lens,
        table if table is not None else lens,
        acc, mx, sm, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), index.stride(0) if index is not None else 0,
        table.stride(0) if table is not None else 0, heads, chunk, scale,
        G=group, GP=pow2(group, 16), D=dim, DP=pow2(dim, 16), DV=dim_v, DVP=dvp,
        SPLITS=splits, BLOCK=BLOCK_N, HAS_INDEX=index is not None, IEEE=q.dtype == torch.float32,
        KV_FP8=k.dtype == FP8_KV, PAGED=table is not None, PAGE=page)
    out = torch.empty(bsz, heads, dim_v, dtype=q.dtype, device=q.device)
    combine_kernel[(bsz, heads)](acc, mx, sm, out, out.stride(0), out.stride(1), heads,
                                 SPLITS=splits, SP=pow2(splits), DV=dim_v, DVP=dvp)
    return out


@torch.library.custom_op("deepserve::decode_attention", mutates_args=())
def _decode_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         lengths: torch.Tensor, scale: float, index: torch.Tensor | None,
                         valid: torch.Tensor | None, table: torch.Tensor | None = None,
                         page: int = 1) -> torch.Tensor:
    return _launch(q, k, v, lengths, scale, index, valid, table, page)


@_decode_attention_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, scale: float,
      index: torch.Tensor | None, valid: torch.Tensor | None, table: torch.Tensor | None = None,
      page: int = 1) -> torch.Tensor:
    return q.new_empty(q.shape[0], q.shape[1], v.shape[-1])


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           table: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention over a paged cache: returns [B, H, Dv].

    ``k_pool``/``v_pool`` [blocks, Hkv, page, D]; ``table`` [B, max_blocks] block ids of each
    sequence in order; attends rows ``< lengths[b]``, row ``r`` living in block
    ``table[b, r // page]`` at offset ``r % page``. Blocks a table does not name are never read.
    """
    bsz, heads, dim = q.shape
    kv_heads, page = k_pool.shape[1], k_pool.shape[2]
    if (k_pool.dim() != 4 or v_pool.shape[:3] != k_pool.shape[:3] or heads % kv_heads
            or dim != k_pool.shape[-1] or table.shape[0] != bsz or k_pool.dtype not in (q.dtype, FP8_KV)):
        raise ValueError(f"paged_decode_attention: bad shapes q {tuple(q.shape)}, pool "
                         f"{tuple(k_pool.shape)}, table {tuple(table.shape)}")
    return _decode_attention_op(q, k_pool, v_pool, lengths, float(scale), None, None, table, page)


def paged_gather(pool: torch.Tensor, table: torch.Tensor, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of each sequence as a contiguous [B, Hkv, rows, D] copy."""
    page = pool.shape[2]
    blocks = pool[table[:, : -(-rows // page)].long()]  # [B, nb, Hkv, page, D]
    bsz, nb, kv_heads, _, dim = blocks.shape
    return blocks.permute(0, 2, 1, 3, 4).reshape(bsz, kv_heads, nb * page, dim)[:, :, :rows]


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     lengths: torch.Tensor | None, scale: float,
                     index: torch.Tensor | None = None,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query per sequence over its cache rows: returns [B, H, Dv].

    ``q`` [B, H, D]; ``k`` [B, Hkv, S, D], ``v`` [B, Hkv, S, Dv] (the cache rows of each
    sequence; H a multiple of Hkv). Dense: attend rows ``< lengths[b]`` (``lengths`` [B],
    each >= 1). Sparse: attend rows ``index[b, j]`` [B, n] where ``valid[b, j]`` (at least
    one per sequence); ``lengths`` is then ignored. A torch custom op, so
    ``torch.compile`` treats it as one opaque call and CUDA graphs capture it.
    """
    if index is None and lengths is None:
        raise ValueError("decode_attention needs lengths (dense) or index (sparse)")
    dummy = lengths if lengths is not None else torch.empty(0, dtype=torch.int32, device=q.device)
    return _decode_attention_op(q, k, v, dummy, float(scale), index, valid)
