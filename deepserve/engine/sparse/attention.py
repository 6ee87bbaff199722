"""Token-sparse attention: the indexer picks top-k cached tokens, attention reads only those.

Each query attends the ``sinks`` first tokens, the ``local_window`` most recent tokens
(itself included) and the ``top_k`` other tokens the indexer scores highest. When that
budget covers the whole context the dense kernel runs instead, so the result is exactly
the dense one. Decode-sized batches (few queries) gather just the selected K/V rows; long
prefills apply the same selection as a mask to the dense kernel (prefill is
compute-bound; the selection and therefore the output are identical). One-token decode on a
GPU uses the flash-decoding kernel, which reads the selected rows in place. Counters record
how many KV entries (token rows of one layer, all KV heads) each path read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from deepserve.engine.kernels import decode_attention, decode_attention_supported
from deepserve.engine.model.attention import AttentionBatch, dense_attention
from deepserve.engine.sparse.indexer import LightningIndexer


@dataclass
class SparseCounters:
    """What sparse attention read, summed over layers, sequences and queries.

    ``kv_entries_read`` counts (query, cached token) pairs whose K/V rows attention read;
    ``kv_entries_dense`` what dense attention over the same causal context reads;
    ``indexer_entries_scanned`` the indexer keys scored (each ``head_dim`` numbers,
    far smaller than a KV entry). Values are kept as device tensors so counting never
    forces a host sync; :meth:`as_dict` reads them.
    """

    kv_entries_read: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    kv_entries_dense: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    indexer_entries_scanned: torch.Tensor = field(
        default_factory=lambda: torch.zeros((), dtype=torch.long))
    sparse_calls: int = 0
    dense_calls: int = 0

    def add(self, read: torch.Tensor, dense: torch.Tensor, scanned: torch.Tensor) -> None:
        """Accumulate one call's counts (tensors on any device)."""
        if self.kv_entries_read.device != read.device:
            self.kv_entries_read = self.kv_entries_read.to(read.device)
            self.kv_entries_dense = self.kv_entries_dense.to(read.device)
            self.indexer_entries_scanned = self.indexer_entries_scanned.to(read.device)
        self.kv_entries_read += read
        self.kv_entries_dense += dense
        self.indexer_entries_scanned += scanned

    def reset(self) -> None:
        """Zero every counter."""
        self.kv_entries_read.zero_()
        self.kv_entries_dense.zero_()
        self.indexer_entries_scanned.zero_()
        self.sparse_calls = self.dense_calls = 0

    def as_dict(self) -> dict[str, float]:
        """Counters as numbers, plus ``read_fraction`` = read / dense (1.0 when nothing ran)."""
        read, dense = int(self.kv_entries_read), int(self.kv_entries_dense)
        return {"kv_entries_read": read, "kv_entries_dense": dense,
                "indexer_entries_scanned": int(self.indexer_entries_scanned),
                "sparse_calls": self.sparse_calls, "dense_calls": self.dense_calls,
                "read_fraction": read / dense if dense else 1.0}


def selection_bias(valid: torch.Tensor, positions: torch.Tensor, sinks: int,
                   local_window: int) -> torch.Tensor:
    """[B, T, S] float32: +inf for sinks and the local window, -inf where not allowed, else 0.

    Added to the indexer scores it forces and forbids tokens; it depends only on the
    positions, so one pass computes it once for all layers.
    """
    pos = torch.arange(valid.shape[-1], device=valid.device).view(1, 1, -1)
    forced = valid & ((pos < sinks) | (pos > positions[..., None] - local_window))
    bias = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    return bias.masked_fill_(~valid, -math.inf).masked_fill_(forced, math.inf)


def select_with_bias(scores: torch.Tensor, bias: torch.Tensor,
                     n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``n`` of ``scores + bias`` [B, T, S]: ``(index, chosen)`` each [B, T, n]."""
    top, index = (scores.float() + bias).topk(min(n, scores.shape[-1]), dim=-1, sorted=False)
    return index, top > -math.inf


def select_tokens(scores: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor,
                  top_k: int, sinks: int, local_window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the cached tokens each query attends.

    ``scores``/``valid`` [B, T, S], ``positions`` [B, T]. Returns ``(index [B, T, n],
    chosen [B, T, n])`` with ``n = min(S, top_k + sinks + local_window)``; ``chosen`` is
    False for padding picks (queries with fewer valid tokens than ``n``).
    """
    bias = selection_bias(valid, positions, sinks, local_window)
    return select_with_bias(scores, bias, top_k + sinks + local_window)


class PassState:
    """What every layer of one forward pass shares: context length, counts, selection bias."""

    def __init__(self) -> None:
        self.batch: AttentionBatch | None = None
        self.context = 0
        self.dense_count = torch.zeros((), dtype=torch.long)
        self.bias: torch.Tensor | None = None
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, batch: AttentionBatch, sync: bool = True) -> None:
        """Recompute for a new pass: one host sync for the context length, or (``sync``
        False, capturable by CUDA graphs) the cache length as its upper bound."""
        if self.batch is batch:
            return
        self.batch, self.bias, self.rope = batch, None, None
        self.context = int(batch.positions.max()) + 1 if sync else batch.mask.shape[-1]
        self.dense_count = batch.mask.sum()

    def indexer_rope(self, indexer: LightningIndexer) -> tuple[torch.Tensor, torch.Tensor]:
        """The pass's rotary tables narrowed to the indexer's frequencies (computed once)."""
        assert self.batch is not None
        if self.rope is None:
            self.rope = indexer.rope_tables(self.batch.cos, self.batch.sin)
        return self.rope

    def selection_bias(self, sinks: int, local_window: int) -> torch.Tensor:
        """The pass's :func:`selection_bias` (computed on first use)."""
        assert self.batch is not None
        if self.bias is None:
            self.bias = selection_bias(self.batch.mask[:, 0], self.batch.positions, sinks,
                                       local_window)
        return self.bias


def gathered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
                       chosen: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention over only the selected rows: reads ``n`` K/V rows per query.

    ``q`` [B, H, T, Dk], ``k`` [B, Hkv, S, Dk], ``v`` [B, Hkv, S, Dv], ``index``/``chosen``
    [B, T, n]. Returns [B, H, T, Dv] in ``q``'s dtype (softmax in float32).
    """
    bsz, heads, seqlen, _ = q.shape
    kv_heads, n = k.shape[1], index.shape[-1]
    flat = index.reshape(bsz, 1, seqlen * n, 1)
    kg = k.gather(2, flat.expand(bsz, kv_heads, seqlen * n, k.shape[-1]))
    vg = v.gather(2, flat.expand(bsz, kv_heads, seqlen * n, v.shape[-1]))
    kg = kg.view(bsz, kv_heads, seqlen, n, -1)  # [B, Hkv, T, n, Dk]
    vg = vg.view(bsz, kv_heads, seqlen, n, -1)  # [B, Hkv, T, n, Dv]
    qg = q.view(bsz, kv_heads, heads // kv_heads, seqlen, -1)  # [B, Hkv, G, T, Dk]
    logits = torch.einsum("bkgtd,bktnd->bkgtn", qg, kg).float() * scale
    logits = logits.masked_fill(~chosen[:, None, None], -math.inf)
    probs = logits.softmax(dim=-1)  # float32 softmax, products in the cache dtype
    out = torch.einsum("bkgtn,bktnd->bkgtd", probs.to(vg.dtype), vg)
    return out.reshape(bsz, heads, seqlen, -1).to(q.dtype)


class SparseAttention:
    """An ``AttentionFn`` for one layer: indexer scoring, top-k selection, sparse attention.

    The layer's hidden input (and MLA query latent) arrive through hooks installed by
    :func:`deepserve.engine.sparse.install.apply_sparse_attention` in ``pending_*``.
    ``force_select`` runs the selection path even when the budget covers the context
    (tests use it to check the sparse kernels against dense). ``sync_free`` decides dense
    versus sparse from the cache length instead of the live context (no host sync, so
    the step can be captured in a CUDA graph; below the budget the sparse kernels then
    select every token, equal to dense up to rounding rather than bit for bit).
    """

    def __init__(self, indexer: LightningIndexer, top_k: int, sinks: int, local_window: int,
                 counters: SparseCounters, gather_max_queries: int = 16,
                 force_select: bool = False, shared: PassState | None = None,
                 sync_free: bool = False) -> None:
        self.indexer, self.counters = indexer, counters
        self.top_k, self.sinks, self.local_window = top_k, sinks, local_window
        self.gather_max_queries, self.force_select = gather_max_queries, force_select
        self.pending_x: torch.Tensor | None = None
        self.pending_q_input: torch.Tensor | None = None
        self.last_selection: tuple[torch.Tensor, torch.Tensor] | None = None
        self.shared = shared or PassState()
        self.sync_free = sync_free

    @property
    def budget(self) -> int:
        """Most tokens one query attends: top_k + sinks + local_window."""
        return self.top_k + self.sinks + self.local_window

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 batch: AttentionBatch, scale: float, layer: int) -> torch.Tensor:
        x, q_input = self.pending_x, self.pending_q_input
        if x is None:
            raise RuntimeError(f"layer {layer}: sparse attention called without its input hook")
        self.pending_x = self.pending_q_input = None
        shared = self.shared
        shared.update(batch, sync=not self.sync_free)
        cos, sin = shared.indexer_rope(self.indexer)
        scores = self.indexer(x, x if q_input is None else q_input, batch.slots,
                              batch.positions, cos, sin)  # [B, T, S]
        dense_count = shared.dense_count
        if shared.context <= self.budget and not self.force_select:
            self.counters.dense_calls += 1
            self.counters.add(dense_count, dense_count, dense_count)
            return dense_attention(q, k, v, batch, scale, layer)
        bias = shared.selection_bias(self.sinks, self.local_window)
        index, chosen = select_with_bias(scores, bias, self.budget)
        self.last_selection = (index, chosen)
        self.counters.sparse_calls += 1
        self.counters.add(chosen.sum(), dense_count, dense_count)
        if q.shape[2] == 1 and decode_attention_supported(q[:, :, 0], k, v):
            # the kernel gathers the selected rows itself: no copy of them is written
            return decode_attention(q[:, :, 0], k, v, None, scale, index=index[:, 0],
                                    valid=chosen[:, 0])[:, :, None]
        if q.shape[2] <= self.gather_max_queries:
            return gathered_attention(q, k, v, index, chosen, scale)
        sparse_mask = torch.zeros_like(batch.mask[:, 0]).scatter_(-1, index, chosen)  # [B, T, S]
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=sparse_mask[:, None], scale=scale,
            enable_gqa=k.shape[1] != q.shape[1])
