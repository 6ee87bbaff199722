"""The lightning indexer: a light multi-head scorer with its own small key cache.

Modelled on DeepSeek-V3.2's indexer (DSA): per token it stores one small key
``k = rope(LayerNorm(W_k x))`` of ``head_dim`` numbers; a query scores every cached key as
``I(t, s) = sum_h w_h(t) * relu(q_h(t) . k(s))`` with per-head weights ``w = W_w x``.
Rotary embedding uses the half-split (non-interleaved) layout on the first ``rope_dim``
dimensions, as in the DeepSeek-V3.2 reference; it reuses the model's rotary tables, taking
``rope_dim / 2`` of their frequencies spread over the spectrum when the indexer's rotary
part is narrower than the model's (all of them, in order, when it is as wide). Tensor names follow DeepSeek-V3.2
checkpoints (``self_attn.indexer.{wq_b,wk,k_norm,weights_proj}``) so their weights load
unchanged; ``wq_b`` reads the query latent of MLA models with ``q_lora_rank`` and the
hidden state otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepserve.engine.kernels import indexer_scores, indexer_scores_supported
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.rope import apply_rope


@dataclass(frozen=True)
class IndexerConfig:
    """Shape of one layer's indexer (``index_n_heads``/``index_head_dim`` in DeepSeek-V3.2)."""

    n_heads: int = 4
    head_dim: int = 64
    rope_dim: int = 32

    def __post_init__(self) -> None:
        if self.n_heads < 1 or self.head_dim < 1:
            raise ValueError("indexer n_heads and head_dim must be >= 1")
        if not 0 <= self.rope_dim <= self.head_dim or self.rope_dim % 2:
            raise ValueError(f"indexer rope_dim must be even and <= head_dim, got {self.rope_dim}")

    @classmethod
    def for_model(cls, args: ModelArgs, config: dict[str, Any] | None = None) -> IndexerConfig:
        """Indexer shape for ``args``: from ``config.json`` keys when present, else small defaults.

        The rotary part must match the model's rotary tables (``head_dim`` for GQA,
        ``qk_rope_head_dim`` for MLA) because the indexer reuses them.
        """
        model_rope = model_rope_dim(args)
        config = config or {}
        head_dim = int(config.get("index_head_dim") or (64 if model_rope >= 64 else 32))
        heads = int(config.get("index_n_heads") or 4)
        return cls(n_heads=heads, head_dim=head_dim, rope_dim=min(model_rope, head_dim // 2))


def model_rope_dim(args: ModelArgs) -> int:
    """Width of the model's rotary tables (``qk_rope_head_dim`` for MLA, ``head_dim`` else)."""
    return args.qk_rope_head_dim if args.is_mla else args.head_dim


class IndexerKeyCache(nn.Module):
    """Indexer keys ``[slots, 1, max_seq, head_dim]`` (the KV-cache layout, one head)."""

    k_cache: torch.Tensor

    def __init__(self, slots: int, max_seq: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(slots, 1, max_seq, head_dim, dtype=dtype,
                                                    device=device), persistent=False)

    def update(self, slots: torch.Tensor | None, positions: torch.Tensor,
               k: torch.Tensor) -> torch.Tensor:
        """Write ``k`` [B, T, Dk] at ``positions`` [B, T]; return the rows [B, S, Dk]."""
        rows = torch.arange(k.shape[0], device=k.device) if slots is None else slots
        self.k_cache[rows[:, None], 0, positions] = k.to(self.k_cache.dtype)
        cache = self.k_cache[: k.shape[0]] if slots is None else self.k_cache[slots]
        return cache[:, 0]


class LightningIndexer(nn.Module):
    """Scores cached tokens for each query; attention then reads only the best ones."""

    rope_columns: torch.Tensor

    def __init__(self, args: ModelArgs, config: IndexerConfig) -> None:
        super().__init__()
        self.config = config
        d = args.hidden_size
        q_in = args.q_lora_rank if args.is_mla and args.q_lora_rank else d
        self.wq_b = nn.Linear(q_in, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(d, config.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(config.head_dim)
        self.weights_proj = nn.Linear(d, config.n_heads, bias=False)
        self.softmax_scale = config.head_dim**-0.5
        self.cache: IndexerKeyCache | None = None
        full = model_rope_dim(args)
        if config.rope_dim > full:
            raise ValueError(f"indexer rope_dim {config.rope_dim} exceeds the model's {full}")
        pairs = torch.linspace(0, full // 2 - 1, config.rope_dim // 2).round().long()
        self.register_buffer("rope_columns", torch.cat([pairs, pairs + full // 2]), persistent=False)

    def allocate(self, slots: int, max_seq: int) -> None:
        """(Re)allocate the key cache for ``slots`` sequences of ``max_seq`` tokens."""
        weight = self.wk.weight
        self.cache = IndexerKeyCache(slots, max_seq, self.config.head_dim, weight.dtype,
                                     weight.device)

    def rope_tables(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's rotary tables [B, T, Dm] narrowed to this indexer's ``rope_dim``."""
        if cos.shape[-1] == self.config.rope_dim:
            return cos, sin
        return cos[..., self.rope_columns], sin[..., self.rope_columns]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [B, H, T, D]; rotate the first rope_dim dims (half-split layout)
        r = self.config.rope_dim
        if r == 0:
            return x
        cos, sin = self.rope_tables(cos, sin)
        return torch.cat([apply_rope(x[..., :r], cos, sin), x[..., r:]], dim=-1)

    def keys(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Indexer keys [B, T, Dk] for hidden states ``x`` [B, T, D]."""
        k = self.k_norm(self.wk(x)).unsqueeze(1)  # [B, 1, T, Dk]
        return self._rope(k, cos, sin)[:, 0]

    def scores(self, x: torch.Tensor, q_input: torch.Tensor, cached_keys: torch.Tensor,
               cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Index scores [B, T, S] (float32) of queries at ``x`` against ``cached_keys`` [B, S, Dk]."""
        bsz, seqlen, _ = x.shape
        cfg = self.config
        q = self.wq_b(q_input).view(bsz, seqlen, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        q = self._rope(q, cos, sin)  # [B, Hi, T, Dk]
        weights = self.weights_proj(x).float() * (cfg.n_heads**-0.5 * self.softmax_scale)  # [B, T, Hi]
        if seqlen == 1:
            q1 = q[:, :, 0].to(cached_keys.dtype)
            if indexer_scores_supported(q1, cached_keys):  # one pass over the keys (decode)
                return indexer_scores(q1, weights[:, 0], cached_keys)[:, None]
        # dot products in the cache dtype (no float32 copy of the whole key cache)
        logits = torch.einsum("bhtd,bsd->bhts", q.to(cached_keys.dtype), cached_keys).float().relu()
        return torch.einsum("bhts,bth->bts", logits, weights)

    def forward(self, x: torch.Tensor, q_input: torch.Tensor, slots: torch.Tensor | None,
                positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Cache the keys of ``x`` at ``positions`` and return scores [B, T, S] over the cache."""
        if self.cache is None:
            raise RuntimeError("indexer cache not allocated (call allocate_indexer_caches)")
        cached = self.cache.update(slots, positions, self.keys(x, cos, sin))
        return self.scores(x, q_input, cached, cos, sin)
