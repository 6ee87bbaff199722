"""Attention modules and the seam where attention kernels plug in.

Every attention module calls ``self.attention_fn(q, k, v, batch, scale)``. The default is
:func:`dense_attention`: the flash-decoding kernel for one-token decode steps (reads only
each sequence's live rows), causal FlashAttention over the new tokens for a fresh prefill,
and masked PyTorch SDPA (:func:`sdpa_attention`) otherwise. The sparse feature swaps in sparse attention
(top-k indexer, sinks, local window) per layer with :func:`set_attention_fn` without
touching the modules; MLA runs in latent space so it uses the same seam as MQA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from deepserve.engine.kernels import decode_attention, decode_attention_supported
from deepserve.engine.kernels.flash_decode import paged_decode_attention, paged_gather, runs_on
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.cache import KVCache, LatentCache
from deepserve.engine.model.layers import RMSNorm, stack_linears
from deepserve.engine.model.rope import (
    apply_rope,
    apply_rope_interleaved,
    attention_scale_multiplier,
)


@dataclass
class AttentionBatch:
    """What a forward pass knows about the tokens it processes.

    ``positions`` [B, T] absolute positions; ``slots`` [B] cache rows (None: all rows in
    order); ``mask`` [B, 1, T, S] True where a query may attend a cache position;
    ``cos``/``sin`` [B, T, rope_dim] rotary tables at ``positions``. ``fresh``: every
    sequence starts at position 0 with positions ``0..T-1`` (a prefill with nothing cached
    before it), so the new tokens are the whole context. ``decode_lengths``: for one-token
    passes, the rows each query attends, computed once per pass for every layer.
    """

    positions: torch.Tensor
    slots: torch.Tensor | None
    mask: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    fresh: bool = False
    decode_lengths: torch.Tensor | None = None  # [B] int32 position + 1 of one-token passes
    block_table: torch.Tensor | None = None  # [B, blocks] int32: a paged cache (paged_kv.py)


class AttentionFn(Protocol):
    """``(q [B,H,T,Dk], k [B,Hkv,S,Dk], v [B,Hkv,S,Dv], batch, scale, layer) -> [B,H,T,Dv]``."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 batch: AttentionBatch, scale: float, layer: int) -> torch.Tensor: ...


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   batch: AttentionBatch, scale: float, layer: int) -> torch.Tensor:
    """Dense masked attention with grouped KV heads (PyTorch scaled_dot_product_attention)."""
    del layer
    k, v = k.to(q.dtype), v.to(q.dtype)  # an fp8 cache is widened (no copy otherwise)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=batch.mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    batch: AttentionBatch, scale: float, layer: int) -> torch.Tensor:
    """Dense attention, choosing the kernel by the shape of the pass (same result as SDPA).

    One query per sequence (decode): :func:`decode_attention` over rows ``<= position``
    when it supports the shapes. A fresh prefill: causal attention over the first T cache
    rows (the new tokens) without a mask, which lets SDPA use FlashAttention. Else masked SDPA.
    """
    seqlen = q.shape[2]
    if seqlen == 1:
        q1 = q[:, :, 0]
        if decode_attention_supported(q1, k, v):
            lengths = batch.decode_lengths
            if lengths is None:
                lengths = batch.positions[:, 0] + 1
            return decode_attention(q1, k, v, lengths, scale)[:, :, None]
    elif batch.fresh and seqlen <= k.shape[2]:
        return F.scaled_dot_product_attention(
            q, k[:, :, :seqlen].to(q.dtype), v[:, :, :seqlen].to(q.dtype), is_causal=True, scale=scale,
            enable_gqa=k.shape[1] != q.shape[1])
    elif seqlen > 1:
        # a prompt chunk (or speculative check) after cached rows: read only the rows up to
        # the last position, not the whole cache (masked rows add exactly 0 either way)
        rows = int(batch.positions.max()) + 1
        if rows < k.shape[2]:
            return sdpa_attention(q, k[:, :, :rows], v[:, :, :rows],
                                  replace(batch, mask=batch.mask[..., :rows]), scale, layer)
    return sdpa_attention(q, k, v, batch, scale, layer)


class GroupedQueryAttention(nn.Module):
    """Llama/Qwen2 attention: per-head keys and values, fewer KV heads than query heads."""

    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.layer, self.heads, self.kv_heads, self.head_dim = (
            layer, args.num_heads, args.num_kv_heads, args.head_dim)
        d, hd = args.hidden_size, args.head_dim
        self.q_proj = nn.Linear(d, self.heads * hd, bias=args.qkv_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * hd, bias=args.qkv_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * hd, bias=args.qkv_bias)
        self.o_proj = nn.Linear(self.heads * hd, d, bias=args.o_bias)
        self.scale = hd**-0.5
        self.cache: KVCache | Any = None  # or a paged_kv.PagedKVCache
        self.attention_fn: AttentionFn = dense_attention
        self.qkv_proj: nn.Linear | None = None  # set by fuse_projections()
        self.qkv_split: tuple[int, int, int] = (0, 0, 0)

    def fuse_projections(self) -> bool:
        """Stack the q/k/v projections into one ``qkv_proj`` (one matmul, one read of x).

        Exact up to matmul rounding; call after loading (and tensor-parallel sharding).
        Returns False, changing nothing, when they are not plain ``nn.Linear`` layers.
        """
        parts = [getattr(self, name, None) for name in ("q_proj", "k_proj", "v_proj")]
        self.qkv_proj = stack_linears(parts)
        if self.qkv_proj is None:
            return False
        self.qkv_split = (parts[0].out_features, parts[1].out_features,  # type: ignore[union-attr]
                          parts[2].out_features)  # type: ignore[union-attr]
        del self.q_proj, self.k_proj, self.v_proj
        return True

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_split, dim=-1)
            return q, k, v
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        bsz, seqlen, _ = x.shape  # x: [B, T, D]
        q, k, v = self._project(x)
        q = q.view(bsz, seqlen, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, seqlen, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(bsz, seqlen, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, batch.cos, batch.sin), apply_rope(k, batch.cos, batch.sin)
        assert self.cache is not None, "call Transformer.setup_caches() first"
        if batch.block_table is not None:
            out = self._paged(q, k, v, batch)
        else:
            k_all, v_all = self.cache.update(batch.slots, batch.positions, k, v)
            out = self.attention_fn(q, k_all, v_all, batch, self.scale, self.layer)  # [B, H, T, hd]
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seqlen, -1))

    def _paged(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               batch: AttentionBatch) -> torch.Tensor:
        """Attention over a paged cache: the kernel reads through the block table at decode;
        otherwise the sequences' rows are gathered and the usual attention runs on them."""
        cache: Any = self.cache  # a paged_kv.PagedKVCache (not imported: it imports this package)
        table = batch.block_table
        assert table is not None and hasattr(cache, "k_pool"), "call setup_paged_caches() first"
        k_pool, v_pool = cast(torch.Tensor, cache.k_pool), cast(torch.Tensor, cache.v_pool)
        cache.write(table, batch.positions, k, v)
        if q.shape[2] == 1 and runs_on(q) and batch.decode_lengths is not None:
            return paged_decode_attention(q[:, :, 0], k_pool, v_pool, table,
                                          batch.decode_lengths, self.scale)[:, :, None]
        rows = int(batch.positions.max()) + 1
        k_all, v_all = paged_gather(k_pool, table, rows), paged_gather(v_pool, table, rows)
        return self.attention_fn(q, k_all, v_all, replace(batch, mask=batch.mask[..., :rows]),
                                 self.scale, self.layer)


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek MLA with the compressed latent KV cache, computed in absorbed form.

    ``kv_b_proj`` is split into W_UK (latent -> key, no rope) and W_UV (latent -> value);
    W_UK is absorbed into the query and W_UV applied after attention, so attention runs
    as multi-query attention over cached ``[latent; k_rope]`` (DeepSeek-V2 paper, §2.1).
    """

    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.layer, self.heads = layer, args.num_heads
        self.nope, self.rope_dim, self.v_dim = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim
        self.rank = args.kv_lora_rank
        self.interleave = args.rope_interleave
        d, qk = args.hidden_size, self.nope + self.rope_dim
        if args.q_lora_rank:
            self.q_a_proj = nn.Linear(d, args.q_lora_rank, bias=args.qkv_bias)
            self.q_a_layernorm = RMSNorm(args.q_lora_rank)
            self.q_b_proj = nn.Linear(args.q_lora_rank, self.heads * qk, bias=False)
        else:
            self.q_proj = nn.Linear(d, self.heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.rank + self.rope_dim, bias=args.qkv_bias)
        self.kv_a_layernorm = RMSNorm(self.rank)
        self.kv_b_proj = nn.Linear(self.rank, self.heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.heads * self.v_dim, d, bias=args.o_bias)
        self.scale = qk**-0.5 * attention_scale_multiplier(args.rope)
        self.cache: LatentCache | None = None
        self.attention_fn: AttentionFn = dense_attention

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        bsz, seqlen, _ = x.shape  # x: [B, T, D]
        q = self._query(x).view(bsz, seqlen, self.heads, -1).transpose(1, 2)  # [B, H, T, nope+rope]
        q_nope, q_rope = torch.split(q, [self.nope, self.rope_dim], dim=-1)
        latent, k_rope = torch.split(self.kv_a_proj_with_mqa(x), [self.rank, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent).unsqueeze(1)  # [B, 1, T, R]
        k_rope = k_rope.unsqueeze(1)  # [B, 1, T, Dr]
        rotate = apply_rope_interleaved if self.interleave else apply_rope
        q_rope, k_rope = rotate(q_rope, batch.cos, batch.sin), rotate(k_rope, batch.cos, batch.sin)
        w = self.kv_b_proj.weight.view(self.heads, self.nope + self.v_dim, self.rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # [H, nope, R], [H, v, R]
        q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # [B, H, T, R]
        assert self.cache is not None, "call Transformer.setup_caches() first"
        keys, values = self.cache.update(batch.slots, batch.positions, latent, k_rope)
        query = torch.cat([q_latent, q_rope], dim=-1)  # [B, H, T, R+Dr]
        out_latent = self.attention_fn(query, keys, values, batch, self.scale, self.layer)
        out = torch.einsum("bhtr,hvr->bhtv", out_latent, w_uv)  # [B, H, T, v]
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seqlen, -1))


def set_attention_fn(model: nn.Module, fn: AttentionFn, layers: set[int] | None = None) -> None:
    """Use ``fn`` for attention in ``layers`` (all when None) of ``model``."""
    for module in model.modules():
        if isinstance(module, GroupedQueryAttention | MultiHeadLatentAttention) and (
                layers is None or module.layer in layers):
            module.attention_fn = fn
