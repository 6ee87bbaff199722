"""Prefix affinity: which replica last served which prompt blocks.

As the Gateway API Inference Extension's prefix scorer does, a prompt is cut into fixed
blocks (``BLOCK_BYTES`` of UTF-8) and each full block gets a hash chained on the previous
one, so a block hash stands for the whole prefix up to it. The index remembers, per block
hash, the replicas that were sent a prompt with that prefix (their KV cache likely still
holds it); it is LRU-bounded in block hashes. Hashes are Python's own (salted per process):
the index lives in one gateway process and is never shared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

BLOCK_BYTES = 64
MAX_BLOCKS = 256  # prompts longer than 16 KiB are matched on their first 16 KiB
DEFAULT_CAPACITY = 200_000  # block hashes remembered (each with a few replica URLs)


def block_hashes(text: str, block: int = BLOCK_BYTES, max_blocks: int = MAX_BLOCKS) -> list[int]:
    """Chained hashes of the full ``block``-byte blocks of ``text`` (the last partial one is left)."""
    data = text.encode()
    out: list[int] = []
    prev = 0
    for start in range(0, min(len(data) // block, max_blocks) * block, block):
        prev = hash((prev, data[start : start + block]))
        out.append(prev)
    return out


class PrefixIndex:
    """Block hash -> replicas that served it, least recently used hashes dropped first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, dict[str, None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def record(self, hashes: Sequence[int], replica: str) -> None:
        """Remember that ``replica`` was sent a prompt with these block hashes."""
        for h in hashes:
            servers = self._blocks.get(h)
            if servers is None:
                self._blocks[h] = {replica: None}
            else:
                servers[replica] = None
                self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def matches(self, hashes: Sequence[int], candidates: Iterable[str]) -> dict[str, int]:
        """Per candidate, how many leading blocks of the prompt it was already sent."""
        matched = dict.fromkeys(candidates, 0)
        for i, h in enumerate(hashes):
            servers = self._blocks.get(h)
            if servers is None:
                break
            progressed = False
            for c in matched:
                if matched[c] == i and c in servers:
                    matched[c] = i + 1
                    progressed = True
            if not progressed:
                break
        return matched

    def forget(self, replica: str) -> None:
        """Drop a replica that went away from every block it was recorded for."""
        for h in list(self._blocks):
            servers = self._blocks[h]
            servers.pop(replica, None)
            if not servers:
                del self._blocks[h]
