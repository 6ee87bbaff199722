"""Static, preallocated KV caches: one object per layer, indexed by (slot, position).

A *slot* holds one sequence; shapes never change after allocation, so decode steps can
be captured by CUDA graphs / ``torch.compile``. The prefix cache and paged KV replace
these objects behind the same ``update`` method.
"""

from __future__ import annotations

import torch
from torch import nn

FP8_MAX = 448.0  # the largest finite float8_e4m3fn value


def to_storage(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in the cache's storage dtype; fp8 (E4M3, unit scale) saturates at +-448
    instead of turning out-of-range values into NaN."""
    if dtype == torch.float8_e4m3fn:
        return x.clamp(-FP8_MAX, FP8_MAX).to(dtype)
    return x


class KVCache(nn.Module):
    """Keys and values per KV head: ``[slots, kv_heads, max_seq, head_dim]``.

    ``dtype`` is the storage type: the model's, or ``torch.float8_e4m3fn`` for an fp8 cache
    (half the bytes of bf16; attention widens rows back to the query's dtype).
    """

    k_cache: torch.Tensor
    v_cache: torch.Tensor

    def __init__(self, slots: int, kv_heads: int, max_seq: int, k_dim: int, v_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(slots, kv_heads, max_seq, k_dim,
                                                    dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(slots, kv_heads, max_seq, v_dim,
                                                    dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor | None, positions: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` [B, Hkv, T, D] at ``positions`` [B, T] of ``slots`` [B].

        ``slots=None`` means the first B slots in order (decode; a view, no copy). Returns
        the full cache rows of those slots: ``(k [B, Hkv, S, D], v [B, Hkv, S, Dv])``.
        """
        bsz = k.shape[0]
        rows = torch.arange(bsz, device=k.device) if slots is None else slots
        # advanced indices around a slice put the indexed dims first: [B, T, Hkv, D]
        self.k_cache[rows[:, None], :, positions] = to_storage(k.transpose(1, 2), self.k_cache.dtype)
        self.v_cache[rows[:, None], :, positions] = to_storage(v.transpose(1, 2), self.v_cache.dtype)
        if slots is None:
            return self.k_cache[:bsz], self.v_cache[:bsz]
        return self.k_cache[slots], self.v_cache[slots]


class LatentCache(nn.Module):
    """MLA cache: the compressed latent and the shared rotary key, ``[slots, 1, S, R + Dr]``.

    It stores ``kv_lora_rank + qk_rope_head_dim`` numbers per token instead of
    ``2 * heads * head_dim`` — the point of multi-head latent attention.
    """

    kv_cache: torch.Tensor

    def __init__(self, slots: int, max_seq: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.kv_lora_rank = kv_lora_rank
        self.register_buffer("kv_cache", torch.zeros(slots, 1, max_seq, kv_lora_rank + rope_dim,
                                                     dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor | None, positions: torch.Tensor,
               latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``latent`` [B, 1, T, R] and ``k_rope`` [B, 1, T, Dr]; return (keys, values).

        Keys are ``[B, 1, S, R + Dr]`` (latent and rotary part), values the latent view
        ``[B, 1, S, R]`` — absorbed MLA attends in latent space.
        """
        bsz = latent.shape[0]
        rows = torch.arange(bsz, device=latent.device) if slots is None else slots
        entry = torch.cat([latent, k_rope], dim=-1).transpose(1, 2)  # [B, T, 1, R+Dr]
        self.kv_cache[rows[:, None], :, positions] = entry
        keys = self.kv_cache[:bsz] if slots is None else self.kv_cache[slots]
        return keys, keys[..., : self.kv_lora_rank]
