"""Attention modules and the seam where attention kernels plug in.

Every attention module calls ``self.attention_fn(q, k, v, batch, scale)``. The default is
:func:`sdpa_attention` (dense, masked, PyTorch SDPA). Part 2 swaps in sparse attention
(top-k indexer, sinks, local window) per layer with :func:`set_attention_fn` without
touching the modules; MLA runs in latent space so it uses the same seam as MQA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.cache import KVCache, LatentCache
from deepserve.engine.model.layers import RMSNorm
from deepserve.engine.model.rope import (
    apply_rope,
    apply_rope_interleaved,
    attention_scale_multiplier,
)
from torch import nn


@dataclass
class AttentionBatch:
    """What a forward pass knows about the tokens it processes.

    ``positions`` [B, T] absolute positions; ``slots`` [B] cache rows (None: all rows in
    order); ``mask`` [B, 1, T, S] True where a query may attend a cache position;
    ``cos``/``sin`` [B, T, rope_dim] rotary tables at ``positions``.
    """

    positions: torch.Tensor
    slots: torch.Tensor | None
    mask: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


class AttentionFn(Protocol):
    """``(q [B,H,T,Dk], k [B,Hkv,S,Dk], v [B,Hkv,S,Dv], batch, scale, layer) -> [B,H,T,Dv]``."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 batch: AttentionBatch, scale: float, layer: int) -> torch.Tensor: ...


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   batch: AttentionBatch, scale: float, layer: int) -> torch.Tensor:
    """Dense masked attention with grouped KV heads (PyTorch scaled_dot_product_attention)."""
    del layer
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=batch.mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )


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
        self.cache: KVCache | None = None
        self.attention_fn: AttentionFn = sdpa_attention

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        bsz, seqlen, _ = x.shape  # x: [B, T, D]
        q = self.q_proj(x).view(bsz, seqlen, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seqlen, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seqlen, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, batch.cos, batch.sin), apply_rope(k, batch.cos, batch.sin)
        assert self.cache is not None, "call Transformer.setup_caches() first"
        k_all, v_all = self.cache.update(batch.slots, batch.positions, k, v)
        out = self.attention_fn(q, k_all, v_all, batch, self.scale, self.layer)  # [B, H, T, hd]
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seqlen, -1))


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
        self.attention_fn: AttentionFn = sdpa_attention

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
