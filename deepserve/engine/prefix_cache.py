"""Prefix (prompt) KV reuse over two tiers: device memory, spilling to host memory.

Prompts are cut into blocks of ``block_tokens``; block *i* is keyed by a hash chained
over every token up to its end (``h_i = H(h_{i-1} || tokens_i)``), so a key names a
whole prefix, never a block out of context. After a prefill the full blocks' KV rows
(every per-slot cache buffer of the model: keys, values, MLA latents, indexer keys)
are copied into the device tier. A later prompt that starts with the same blocks
copies them back into its slot and prefills only the rest.

Memory is bounded in bytes per tier. When the device tier is over budget its least
recently used blocks move to the host tier (pinned memory on CUDA); when the host
tier is over budget its LRU blocks are dropped. Lookups touch a chain's blocks from
the last to the first, so a prefix's tail is evicted before its head (a head without
its tail is still useful; a tail without its head is not). Counters: lookups, hits,
misses, reused and computed tokens, spills, promotions, evictions, bytes per tier.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

CACHE_BUFFER_NAMES = ("k_cache", "v_cache", "kv_cache")


@dataclass
class _Block:
    tensors: list[torch.Tensor]  # one per buffer group: [buffers in group, H, block, D]
    nbytes: int


def _groups(buffers: list[torch.Tensor]) -> list[list[int]]:
    """Indices of buffers with equal (heads, dim, dtype): each group is stored stacked."""
    groups: dict[tuple[int, int, torch.dtype], list[int]] = {}
    for i, buf in enumerate(buffers):
        groups.setdefault((buf.shape[1], buf.shape[3], buf.dtype), []).append(i)
    return list(groups.values())


@dataclass
class PrefixCacheStats:
    """Counters of a :class:`PrefixCache`."""

    lookups: int = 0
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    stored_blocks: int = 0
    spills: int = 0
    promotions: int = 0
    evictions: int = 0
    device_bytes: int = 0
    host_bytes: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def cache_buffers(model: nn.Module, slots: int, max_seq: int) -> list[torch.Tensor]:
    """Every per-slot cache buffer ``[slots, H, max_seq, D]`` of ``model``, in a fixed order."""
    found = []
    for name, buf in model.named_buffers():
        if (name.rsplit(".", 1)[-1] in CACHE_BUFFER_NAMES and buf.dim() == 4
                and buf.shape[0] == slots and buf.shape[2] == max_seq):
            found.append(buf)
    return found


def block_keys(token_ids: Sequence[int], block_tokens: int, salt: str = "") -> list[bytes]:
    """Chained hashes of the full blocks of ``token_ids``."""
    keys, previous = [], hashlib.blake2b(salt.encode(), digest_size=16).digest()
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        block = token_ids[start:start + block_tokens]
        data = previous + b"".join(int(t).to_bytes(4, "little", signed=False) for t in block)
        previous = hashlib.blake2b(data, digest_size=16).digest()
        keys.append(previous)
    return keys


class PrefixCache:
    """Reuses the KV of shared prompt prefixes for a model with slot-indexed caches.

    ``device_bytes``/``host_bytes`` bound each tier (0 disables a tier). ``salt``
    separates models or weight versions sharing one process.
    """

    def __init__(self, model: nn.Module, device_bytes: int, host_bytes: int = 0,
                 block_tokens: int = 16, salt: str = "") -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be >= 1")
        self.model, self.block_tokens, self.salt = model, block_tokens, salt
        self.device_budget, self.host_budget = device_bytes, host_bytes
        self._device: OrderedDict[bytes, _Block] = OrderedDict()
        self._host: OrderedDict[bytes, _Block] = OrderedDict()
        self.stats = PrefixCacheStats()

    def _buffers(self) -> list[torch.Tensor]:
        slots, max_seq = int(getattr(self.model, "cache_slots", 0)), int(getattr(self.model, "max_seq_len", 0))
        buffers = cache_buffers(self.model, slots, max_seq)
        if not buffers:
            raise RuntimeError("the model has no slot caches (call setup_caches first)")
        return buffers

    def __contains__(self, key: bytes) -> bool:
        return key in self._device or key in self._host

    def restore(self, slot: int, token_ids: Sequence[int]) -> int:
        """Copy the longest cached prefix of ``token_ids`` into ``slot``; return its length.

        At least one prompt token is always left to prefill (it yields the logits).
        """
        self.stats.lookups += 1
        usable = (len(token_ids) - 1) // self.block_tokens
        keys = block_keys(token_ids[: usable * self.block_tokens], self.block_tokens, self.salt)
        hit = 0
        for key in keys:
            if key not in self:
                break
            hit += 1
        if hit == 0:
            self.stats.misses += 1
            self.stats.computed_tokens += len(token_ids)
            return 0
        buffers = self._buffers()
        groups = _groups(buffers)
        blocks = [self._device.get(key) or self._host[key] for key in keys[:hit]]
        reused = hit * self.block_tokens
        device = buffers[0].device
        for g, group in enumerate(groups):  # one concatenation and one copy per buffer
            parts = [block.tensors[g] for block in blocks]
            if all(p.device == device for p in parts):
                joined = torch.cat(parts, dim=2)
            else:  # pinned host blocks: asynchronous copies, ordered on the current stream
                joined = torch.cat([p.to(device, non_blocking=True) for p in parts], dim=2)
            for j, index in enumerate(group):
                buffers[index][slot, :, :reused].copy_(joined[j], non_blocking=True)
        for i, key in enumerate(keys[:hit]):  # host hits move back to the device tier
            if key in self._host and self.device_budget > 0:
                block = self._host.pop(key)
                self.stats.host_bytes -= block.nbytes
                self._insert_device(key, self._capture(slot, i * self.block_tokens, buffers, groups))
                self.stats.promotions += 1
        self._touch(reversed(keys[:hit]))  # head most recent: tails are evicted first
        self._enforce_budgets()
        self.stats.hits += 1
        self.stats.reused_tokens += reused
        self.stats.computed_tokens += len(token_ids) - reused
        return reused

    def store(self, slot: int, token_ids: Sequence[int]) -> int:
        """Save the full blocks of ``token_ids`` (already in ``slot``'s cache); return blocks added."""
        keys = block_keys(token_ids, self.block_tokens, self.salt)
        if not keys or (self.device_budget <= 0 and self.host_budget <= 0):
            return 0
        buffers = self._buffers()
        groups = _groups(buffers)
        added = 0
        for i, key in enumerate(keys):
            if key in self:
                continue
            block = self._capture(slot, i * self.block_tokens, buffers, groups)
            if self.device_budget > 0:
                self._insert_device(key, block)
            else:
                self._to_host(key, block)
            added += 1
        self._touch(reversed(keys))
        self.stats.stored_blocks += added
        self._enforce_budgets()
        return added

    def _touch(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            for tier in (self._device, self._host):
                if key in tier:
                    tier.move_to_end(key)

    def _to_host(self, key: bytes, block: _Block) -> None:
        if block.tensors[0].is_cuda:  # one asynchronous copy into pinned memory
            block.tensors = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(
                t, non_blocking=True) for t in block.tensors]
        self._host[key] = block
        self.stats.host_bytes += block.nbytes

    def _capture(self, slot: int, start: int, buffers: list[torch.Tensor],
                 groups: list[list[int]]) -> _Block:
        """Copy one block of ``slot`` out of the cache buffers (one stack per group)."""
        end = start + self.block_tokens
        tensors = [torch.stack([buffers[i][slot, :, start:end] for i in group]) for group in groups]
        return _Block(tensors, sum(t.numel() * t.element_size() for t in tensors))

    def _insert_device(self, key: bytes, block: _Block) -> None:
        self._device[key] = block
        self.stats.device_bytes += block.nbytes

    def _enforce_budgets(self) -> None:
        while self.stats.device_bytes > self.device_budget and self._device:
            key, block = self._device.popitem(last=False)
            self.stats.device_bytes -= block.nbytes
            if self.host_budget > 0:
                self._to_host(key, block)
                self.stats.spills += 1
            else:
                self.stats.evictions += 1
        while self.stats.host_bytes > self.host_budget and self._host:
            _, block = self._host.popitem(last=False)
            self.stats.host_bytes -= block.nbytes
            self.stats.evictions += 1

    def clear(self) -> None:
        """Drop every cached block (e.g. after new weights were loaded)."""
        self._device.clear()
        self._host.clear()
        self.stats.device_bytes = self.stats.host_bytes = 0

    def as_dict(self) -> dict[str, int]:
        """Counters and tier sizes as plain numbers (for metrics)."""
        s = self.stats
        return {"lookups": s.lookups, "hits": s.hits, "misses": s.misses,
                "reused_tokens": s.reused_tokens, "computed_tokens": s.computed_tokens,
                "stored_blocks": s.stored_blocks, "spills": s.spills, "promotions": s.promotions,
                "evictions": s.evictions, "device_bytes": s.device_bytes, "host_bytes": s.host_bytes,
                "device_blocks": len(self._device), "host_blocks": len(self._host)}
