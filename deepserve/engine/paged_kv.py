"""Paged KV cache: fixed-size blocks from one pool, block tables, shared prefix blocks.

A static cache reserves ``max_seq`` rows per slot whatever a sequence uses. Here every layer
holds one pool ``[blocks, kv_heads, page, head_dim]``; a sequence owns a list of block ids
(its row ``r`` lives in block ``table[r // page]`` at offset ``r % page``), blocks are taken
only as the sequence grows, and returned when it finishes or is cancelled. Full blocks of a
prompt are keyed by the chained hash of their tokens (:func:`prefix_cache.block_keys`), so a
request whose prompt starts the same way maps the same physical blocks (reference counted)
and only prefills what follows. Shared blocks are full and never written again (decode writes
start after the prompt), so no copy-on-write is needed.

The decode kernel reads through the table (:func:`kernels.flash_decode.paged_decode_attention`);
prefill gathers the sequence's rows (:func:`kernels.flash_decode.paged_gather`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from deepserve.engine.generate import prefill_paged
from deepserve.engine.model.cache import to_storage
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.prefix_cache import block_keys


class OutOfBlocksError(RuntimeError):
    """The pool has no free block left (the caller waits, or preempts a sequence)."""


@dataclass
class _Seq:
    blocks: list[int] = field(default_factory=list)
    shared: int = 0  # leading blocks mapped from the prefix index


class BlockTables:
    """Block allocation for many sequences over one pool of ``num_blocks`` blocks of ``page`` rows."""

    def __init__(self, num_blocks: int, page: int, salt: str = "") -> None:
        if num_blocks < 1 or page < 1:
            raise ValueError(f"num_blocks and page must be >= 1, got {num_blocks}, {page}")
        self.num_blocks, self.page, self.salt = num_blocks, page, salt
        self._free = list(range(num_blocks - 1, -1, -1))
        self._refs = [0] * num_blocks
        self._seqs: dict[str, _Seq] = {}
        self._by_key: dict[bytes, int] = {}  # full prompt block hash -> block
        self._key_of: dict[int, bytes] = {}

    @property
    def free_blocks(self) -> int:
        """Blocks not held by any sequence."""
        return len(self._free)

    def blocks_for(self, rows: int) -> int:
        """Blocks that ``rows`` rows occupy."""
        return -(-rows // self.page)

    def _take(self) -> int:
        if not self._free:
            raise OutOfBlocksError(f"all {self.num_blocks} KV blocks are in use")
        block = self._free.pop()
        self._refs[block] = 1
        return block

    def _drop(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            key = self._key_of.pop(block, None)
            if key is not None:
                del self._by_key[key]
            self._free.append(block)

    def add(self, seq_id: str, prompt_ids: Sequence[int]) -> int:
        """Start a sequence: map the cached full blocks its prompt begins with; returns how
        many prompt rows they hold (at least one prompt token is always left to prefill)."""
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} already has blocks")
        seq = self._seqs[seq_id] = _Seq()
        usable = (len(prompt_ids) - 1) // self.page
        for key in block_keys(list(prompt_ids[: usable * self.page]), self.page, self.salt):
            block = self._by_key.get(key)
            if block is None:
                break
            self._refs[block] += 1
            seq.blocks.append(block)
        seq.shared = len(seq.blocks)
        return seq.shared * self.page

    def grow(self, seq_id: str, rows: int) -> list[int]:
        """Make sure the sequence has blocks for ``rows`` rows (allocating on demand); its table.

        Raises :class:`OutOfBlocksError` (allocating nothing) when the pool cannot cover it.
        """
        seq = self._seqs[seq_id]
        need = self.blocks_for(rows) - len(seq.blocks)
        if need > len(self._free):
            raise OutOfBlocksError(f"sequence {seq_id!r} needs {need} more KV blocks, "
                                   f"{len(self._free)} free")
        for _ in range(max(0, need)):
            seq.blocks.append(self._take())
        return seq.blocks

    def publish(self, seq_id: str, prompt_ids: Sequence[int]) -> None:
        """After its prefill, offer the sequence's full prompt blocks to later requests."""
        seq = self._seqs[seq_id]
        for i, key in enumerate(block_keys(list(prompt_ids), self.page, self.salt)):
            if i >= len(seq.blocks):
                break
            block = seq.blocks[i]
            if key not in self._by_key and block not in self._key_of:
                self._by_key[key], self._key_of[block] = block, key

    def release(self, seq_id: str) -> None:
        """The sequence finished or was cancelled: drop its blocks (shared ones stay while used)."""
        seq = self._seqs.pop(seq_id, None)
        for block in seq.blocks if seq else []:
            self._drop(block)

    def table(self, seq_ids: Sequence[str], width: int, device: torch.device | str,
              fill: int = 0) -> torch.Tensor:
        """[len(seq_ids), width] int32 block table (unused entries ``fill``: never read)."""
        out = torch.full((len(seq_ids), width), fill, dtype=torch.int32)
        for row, seq_id in enumerate(seq_ids):
            blocks = self._seqs[seq_id].blocks
            if len(blocks) > width:
                raise ValueError(f"sequence {seq_id!r} has {len(blocks)} blocks, table width {width}")
            out[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        return out.to(device)


class PagedKVCache(nn.Module):
    """One layer's key and value pools ``[blocks, kv_heads, page, head_dim]``."""

    k_pool: torch.Tensor
    v_pool: torch.Tensor

    def __init__(self, num_blocks: int, kv_heads: int, page: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (num_blocks, kv_heads, page, head_dim)
        self.register_buffer("k_pool", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_pool", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def page(self) -> int:
        """Rows per block."""
        return int(self.k_pool.shape[2])

    def write(self, table: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        """Write ``k``/``v`` [B, Hkv, T, D] at ``positions`` [B, T] through ``table`` [B, nb]."""
        blocks = table.long().gather(1, positions // self.page)  # [B, T]
        offsets = positions % self.page
        # advanced indices around a slice put the indexed dims first: [B, T, Hkv, D]
        self.k_pool[blocks, :, offsets] = to_storage(k.transpose(1, 2), self.k_pool.dtype)
        self.v_pool[blocks, :, offsets] = to_storage(v.transpose(1, 2), self.v_pool.dtype)


class PagedSlots:
    """The engine's side of a paged cache: pools in ``model``, admission by reservation,
    prefill into blocks, per-step block tables, release on finish or cancel.

    A request is admitted only when blocks for its prompt plus ``max_tokens`` are not
    promised to others, so a running sequence never runs out; blocks are still taken only
    as it grows. Keys are cache slots (unique among running sequences)."""

    def __init__(self, model: Transformer, max_seq_len: int, page: int, blocks: int,
                 kv_dtype: torch.dtype | None) -> None:
        self.width = -(-max_seq_len // page)  # table entries per sequence
        # one more block: padding rows of a decode step write there, no sequence owns it
        model.setup_paged_caches(blocks + 1, page, max_seq_len, kv_dtype)
        self.tables = BlockTables(blocks, page)
        self.pad_block = blocks
        self.reserved = 0

    def reserve(self, prompt_tokens: int, max_tokens: int) -> int:
        """Blocks set aside for one request, or 0 when the pool cannot promise them now."""
        need = self.tables.blocks_for(prompt_tokens + max_tokens)
        if self.reserved + need > self.tables.num_blocks:
            return 0
        self.reserved += need
        return need

    def prefill(self, model: Transformer, slot: int, prompt_ids: Sequence[int]) -> tuple[torch.Tensor, int]:
        """Map cached prompt blocks, prefill the rest; (last logits [V], prompt rows reused)."""
        reused = self.begin(slot, prompt_ids)
        logits = self.prefill_chunk(model, slot, prompt_ids[reused:], reused)
        self.finish_prefill(slot, prompt_ids)
        return logits, reused

    def begin(self, slot: int, prompt_ids: Sequence[int]) -> int:
        """Start the sequence in ``slot``: map the cached blocks its prompt begins with;
        returns the prompt rows they hold (the prefill starts there)."""
        return self.tables.add(str(slot), prompt_ids)

    def prefill_chunk(self, model: Transformer, slot: int, tokens: Sequence[int], start: int) -> torch.Tensor:
        """Prefill prompt ``tokens`` at rows ``start..`` of ``slot`` (taking blocks as needed;
        chunked prefill calls this once per chunk); returns the chunk's last logits [V]."""
        key = str(slot)
        self.tables.grow(key, start + len(tokens))
        table = self.tables.table([key], self.width, model.lm_head.weight.device)
        return prefill_paged(model, torch.tensor(list(tokens), dtype=torch.long), table, start_pos=start)

    def finish_prefill(self, slot: int, prompt_ids: Sequence[int]) -> None:
        """The whole prompt is in the cache: offer its full blocks to later requests."""
        self.tables.publish(str(slot), prompt_ids)

    def step_table(self, next_rows: dict[int, int], width: int) -> torch.Tensor:
        """Block tables of slots ``0..width-1`` for a decode step (``next_rows``: running
        slot -> rows it will hold); free slots point at the padding block."""
        for slot, rows in next_rows.items():
            self.tables.grow(str(slot), rows)  # within its reservation
        table = torch.full((width, self.width), self.pad_block, dtype=torch.int32)
        live = sorted(next_rows)
        table[live] = self.tables.table([str(s) for s in live], self.width, "cpu", fill=self.pad_block)
        return table

    def release(self, slot: int, reserved: int) -> None:
        """The sequence in ``slot`` finished or was cancelled."""
        self.tables.release(str(slot))
        self.reserved -= reserved
