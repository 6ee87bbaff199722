"""Which adapters are on the device: a fixed number of pool slots, loaded on first use, LRU.

:class:`AdapterPool` maps adapter names to pool slots of the :class:`LoraLinear` layers.
A request pins its adapter's slot from admission to its end (:meth:`acquire` /
:meth:`release`); an adapter not resident is read from disk and copied in on its first
request, into a free slot or the least recently used unpinned one (evicted). When every
slot is pinned by running requests the request waits for one to finish.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from deepserve.engine.lora.adapters import (
    AdapterError,
    AdapterWeights,
    read_adapter,
    resolve_adapter_dir,
)
from deepserve.engine.lora.layers import LoraLinear, LoraState, LoraTarget
from deepserve.engine.options import AdapterOptions

log = logging.getLogger(__name__)


@dataclass
class PoolStats:
    """Counters of the pool (exported through ``InferenceEngine.feature_stats``)."""

    loads: int = 0
    evictions: int = 0
    hits: int = 0
    load_seconds: float = 0.0


class AdapterPool:
    """Resident adapters of one engine: at most ``capacity`` at once, evicted LRU."""

    def __init__(self, state: LoraState, targets: Mapping[str, LoraTarget],
                 adapters: Mapping[str, AdapterOptions], capacity: int, max_rank: int,
                 base_dir: str) -> None:
        self.state, self.targets = state, dict(targets)
        self.adapters = dict(adapters)
        self.capacity, self.max_rank, self.base_dir = capacity, max_rank, base_dir
        self.layers: list[LoraLinear] = list({id(t.layer): t.layer for t in targets.values()}.values())
        self._slot_of: collections.OrderedDict[str, int] = collections.OrderedDict()  # LRU first
        self._pins: dict[int, int] = {}
        self._free = list(range(capacity, 0, -1))  # slot 0 is the base model
        self._lock = threading.Lock()  # resident() is read from the metrics thread
        self.stats = PoolStats()

    def known(self, name: str) -> bool:
        """True when ``name`` is one of the model's adapters."""
        return name in self.adapters

    def resident(self) -> list[str]:
        """Names of the adapters on the device now, least recently used first."""
        with self._lock:
            return list(self._slot_of)

    def acquire(self, name: str) -> int | None:
        """Pin ``name``'s slot for one request, loading it first if needed.

        Returns the slot, or None when every slot is pinned (try again later). Raises
        :class:`AdapterError` when the adapter is unknown or cannot be loaded.
        """
        if name not in self.adapters:
            raise AdapterError(f"adapter {name!r}: not one of this model's adapters")
        slot = self._slot_of.get(name)
        if slot is not None:
            self.stats.hits += 1
        else:
            slot = self._take_slot()
            if slot is None:
                return None
            try:
                self._load(name, slot)
            except Exception:
                self._free.append(slot)
                raise
            with self._lock:
                self._slot_of[name] = slot
        with self._lock:
            self._slot_of.move_to_end(name)
        self._pins[slot] = self._pins.get(slot, 0) + 1
        return slot

    def release(self, slot: int) -> None:
        """Unpin ``slot`` (its request finished); it stays resident until evicted."""
        left = self._pins.get(slot, 0) - 1
        if left > 0:
            self._pins[slot] = left
        else:
            self._pins.pop(slot, None)

    def _take_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        victim = next((n for n, s in self._slot_of.items() if not self._pins.get(s)), None)
        if victim is None:
            return None
        with self._lock:
            slot = self._slot_of.pop(victim)
        for layer in self.layers:
            layer.clear_slot(slot)
        self.stats.evictions += 1
        log.info("adapter %s evicted from slot %d", victim, slot)
        return slot

    def _load(self, name: str, slot: int) -> None:
        start = time.monotonic()
        spec = self.adapters[name]
        try:
            directory = resolve_adapter_dir(spec.source, self.base_dir, spec.rank)
        except AdapterError as exc:
            raise AdapterError(f"adapter {name!r}: {exc}") from exc
        weights = read_adapter(directory, name)
        self.check(weights, spec)
        by_layer: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for path, (a, b) in weights.modules.items():
            target = self.targets[path]
            by_layer.setdefault(id(target.layer), {})[target.part] = (a, b * weights.scale)
        for layer in self.layers:
            parts = by_layer.get(id(layer))
            if parts is None:
                layer.clear_slot(slot)
            else:
                layer.set_slot(slot, parts)
        self.stats.loads += 1
        self.stats.load_seconds += time.monotonic() - start
        log.info("adapter %s (rank %d, %d modules) loaded into slot %d in %.3f s", name,
                 weights.rank, len(weights.modules), slot, time.monotonic() - start)

    def check(self, weights: AdapterWeights, spec: AdapterOptions) -> None:
        """Refuse an adapter that does not fit this model, naming what does not fit."""
        name = spec.name
        if spec.rank and weights.rank != spec.rank:
            raise AdapterError(f"adapter {name!r}: rank {weights.rank}, but rank {spec.rank} is configured")
        if weights.rank > self.max_rank:
            raise AdapterError(f"adapter {name!r}: rank {weights.rank} exceeds max_adapter_rank {self.max_rank}")
        for path, (a, b) in weights.modules.items():
            target = self.targets.get(path)
            if target is None:
                raise AdapterError(f"adapter {name!r}: targets {path}, which this engine cannot adapt "
                                   "(attention and dense-MLP projections only)")
            if a.shape[1] != target.in_features or b.shape[0] != target.out_features:
                raise AdapterError(f"adapter {name!r}: {path} is [{b.shape[0]} x {a.shape[1]}], the "
                                   f"model's is [{target.out_features} x {target.in_features}]")

    def as_dict(self) -> dict[str, object]:
        """Counters and the resident set, for ``feature_stats``."""
        return {"capacity": self.capacity, "resident": self.resident(), "loads": self.stats.loads,
                "evictions": self.stats.evictions, "hits": self.stats.hits,
                "load_seconds": round(self.stats.load_seconds, 4)}
