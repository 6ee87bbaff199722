"""The decoder-only transformer (Llama, Qwen2, DeepSeek-V3) with a static KV cache.

Module names mirror the Hugging Face checkpoints so weights load by name without
renaming. Build it on ``torch.device("meta")``, load weights with
``load_state_dict(assign=True)``, then call :meth:`Transformer.setup_caches`.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.attention import (
    AttentionBatch,
    GroupedQueryAttention,
    MultiHeadLatentAttention,
)
from deepserve.engine.model.cache import KVCache, LatentCache
from deepserve.engine.model.layers import GatedMLP, MixtureOfExperts, RMSNorm
from deepserve.engine.model.rope import rope_tables


class DecoderLayer(nn.Module):
    """Pre-norm attention block followed by a pre-norm feed-forward (dense or MoE) block."""

    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.self_attn: GroupedQueryAttention | MultiHeadLatentAttention = (
            MultiHeadLatentAttention(args, layer) if args.is_mla else GroupedQueryAttention(args, layer))
        self.mlp: GatedMLP | MixtureOfExperts = (
            MixtureOfExperts(args) if args.is_moe_layer(layer)
            else GatedMLP(args.hidden_size, args.intermediate_size, args.mlp_bias))
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), batch)
        return h + self.mlp(self.post_attention_layernorm(h))


class DecoderStack(nn.Module):
    """Embedding, decoder layers and final norm (``model.*`` in HF checkpoints)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class Transformer(nn.Module):
    """A causal language model over a static, slot-indexed KV cache."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = DecoderStack(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.max_seq_len = 0
        self.cache_slots = 0
        self.rope_cos: torch.Tensor | None = None
        self.rope_sin: torch.Tensor | None = None

    def setup_caches(self, slots: int, max_seq_len: int, kv_dtype: torch.dtype | None = None) -> None:
        """Allocate the KV cache for ``slots`` sequences of up to ``max_seq_len`` tokens.

        Uses the device and dtype of the loaded weights; also builds the rotary tables.
        ``kv_dtype`` stores keys and values in another dtype (``torch.float8_e4m3fn``:
        grouped-query attention only; MLA's latent cache stays in the weights' dtype).
        """
        weight = self.lm_head.weight
        device, dtype = weight.device, weight.dtype
        args = self.args
        if kv_dtype is not None and kv_dtype != dtype and args.is_mla:
            raise ValueError("kv_cache_dtype: an fp8 KV cache needs grouped-query attention, "
                             "not MLA's latent cache")
        for layer in self.model.layers:
            attn = cast(DecoderLayer, layer).self_attn
            if isinstance(attn, MultiHeadLatentAttention):
                attn.cache = LatentCache(slots, max_seq_len, args.kv_lora_rank, args.qk_rope_head_dim,
                                         dtype, device)
            else:
                attn.cache = KVCache(slots, args.num_kv_heads, max_seq_len, args.head_dim,
                                     args.head_dim, kv_dtype or dtype, device)
        rope_dim = args.qk_rope_head_dim if args.is_mla else args.head_dim
        cos, sin = rope_tables(args.rope, rope_dim, max_seq_len, device)
        self.rope_cos, self.rope_sin = cos.to(dtype), sin.to(dtype)
        self.max_seq_len, self.cache_slots = max_seq_len, slots

    def setup_paged_caches(self, num_blocks: int, page: int, max_seq_len: int,
                           kv_dtype: torch.dtype | None = None) -> None:
        """Give every layer a paged KV pool of ``num_blocks`` blocks of ``page`` rows
        (:mod:`deepserve.engine.paged_kv`); forward then needs ``block_table``.
        Grouped-query attention only."""
        from deepserve.engine.paged_kv import PagedKVCache

        if self.args.is_mla:
            raise ValueError("paged KV cache: needs grouped-query attention, not MLA")
        weight = self.lm_head.weight
        args = self.args
        for layer in self.model.layers:
            cast(DecoderLayer, layer).self_attn.cache = PagedKVCache(
                num_blocks, args.num_kv_heads, page, args.head_dim, kv_dtype or weight.dtype, weight.device)
        cos, sin = rope_tables(args.rope, args.head_dim, max_seq_len, weight.device)
        self.rope_cos, self.rope_sin = cos.to(weight.dtype), sin.to(weight.dtype)
        self.max_seq_len, self.cache_slots = max_seq_len, 0

    def fuse_projections(self) -> int:
        """Stack q/k/v and gate/up projections into single matmuls; returns how many fused.

        Fewer, larger matmuls read the input once and run closer to peak bandwidth in
        decode. Call after loading weights and tensor-parallel sharding, before anything
        that wraps linear layers (adaptive precision then wraps the fused ones).
        """
        fused = 0
        for layer in self.model.layers:
            block = cast(DecoderLayer, layer)
            if isinstance(block.self_attn, GroupedQueryAttention):
                fused += block.self_attn.fuse_projections()
            if isinstance(block.mlp, GatedMLP):
                fused += block.mlp.fuse_projections()
        return fused

    def attention_batch(self, positions: torch.Tensor, slots: torch.Tensor | None,
                        fresh: bool = False) -> AttentionBatch:
        """What every layer of a pass over ``positions`` [B, T] needs (mask, rotary rows).

        :meth:`forward` builds it once; a pipeline stage running only some of the layers
        (:mod:`deepserve.engine.parallel.pipeline`) builds the same one.
        """
        if self.rope_cos is None or self.rope_sin is None:
            raise RuntimeError("call setup_caches() before forward()")
        cache_positions = torch.arange(self.max_seq_len, device=positions.device)
        mask = cache_positions.view(1, 1, 1, -1) <= positions[:, None, :, None]  # [B, 1, T, S]
        return AttentionBatch(positions=positions, slots=slots, mask=mask,
                              cos=self.rope_cos[positions], sin=self.rope_sin[positions],
                              fresh=fresh, decode_lengths=(positions[:, 0] + 1).to(torch.int32)
                              if positions.shape[1] == 1 else None)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                slots: torch.Tensor | None = None, *, last: torch.Tensor | None = None,
                fresh: bool = False, block_table: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``tokens`` [B, T] at ``positions`` [B, T] in cache ``slots`` [B].

        ``slots=None`` means the first B cache slots, in order (the decode
        step). Each query attends cache positions ``<=`` its own position in its slot.
        Returns logits [B, T, vocab], or with ``last`` [B] (an index into T per sequence)
        only those positions' logits [B, 1, vocab]. ``fresh=True`` promises positions
        ``0..T-1`` in every row (a prefill with nothing cached before it), which lets
        attention skip the mask. ``block_table`` [B, blocks] int32: a paged cache
        (:meth:`setup_paged_caches`) instead of slots.
        """
        batch = self.attention_batch(positions, slots, fresh)
        batch.block_table = block_table
        x = self.model.embed_tokens(tokens)  # [B, T, D]
        for layer in self.model.layers:
            x = layer(x, batch)
        if last is not None:
            x = x[torch.arange(x.shape[0], device=x.device), last][:, None]  # [B, 1, D]
        return self.lm_head(self.model.norm(x))
