"""Pool discovery for a caller that asks again and again over mostly the same objects.

The operator discovers pools before every new placement (so the pools and the GPUs it has
promised are read in one moment). At 5,000 nodes a full :func:`discover_pools` reads every
node's labels against every GPUNodePool selector: ~75 ms, for each of thousands of models.
:class:`PoolDiscovery` remembers each node's :class:`NodeFacts` for as long as the caller
hands in the same node object (kopf's index keeps the object until the node changes), and the
whole result while nodes, pods and GPUNodePools are all the same objects; the result is always
what :func:`discover_pools` returns for the same input (tested).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from deepserve.engine.hardware import Catalog, load_catalog
from deepserve.operator.placement.pools import (
    DiscoveredPools,
    NodeFacts,
    node_facts,
    pools_from_facts,
)


class PoolDiscovery:
    """``discover_pools`` with memory of the objects it saw last time; safe across threads.

    The memory holds the node objects themselves (so an ``id`` is never reused while it is
    remembered) and forgets nodes not handed in again. It relies on the caller never changing
    a node, pod or GPUNodePool object in place (kopf's index values are replaced, not edited).
    """

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or load_catalog()
        self._lock = threading.Lock()
        self._facts: dict[int, tuple[Mapping[str, Any], NodeFacts | str | None]] = {}
        self._declared_ids: tuple[int, ...] = ()
        self._declared_refs: list[Mapping[str, Any]] = []
        self._last: tuple[list[Any], list[Any], DiscoveredPools] | None = None
        self.full_reads = 0  # nodes read afresh (a figure for tests and benchmarks)

    def __call__(self, nodes: list[dict], pods: list[dict], gpu_node_pools: list[dict]) -> DiscoveredPools:
        """The pools in ``nodes``, ``pods`` and ``gpu_node_pools``, as :func:`discover_pools` finds them."""
        with self._lock:
            last = self._last
            if last is not None and _same(last[0], nodes) and _same(last[1], pods + gpu_node_pools):
                return last[2]
            declared_ids = tuple(map(id, gpu_node_pools))
            if declared_ids != self._declared_ids:  # selectors changed: every node is read again
                self._facts.clear()
                self._declared_ids, self._declared_refs = declared_ids, list(gpu_node_pools)
            declared = {(p.get("metadata") or {}).get("name", ""): p for p in gpu_node_pools}
            facts: dict[int, tuple[Mapping[str, Any], NodeFacts | str | None]] = {}
            for node in nodes:
                seen = self._facts.get(id(node))
                if seen is None or seen[0] is not node:
                    seen = (node, node_facts(node, declared, self.catalog))
                    self.full_reads += 1
                facts[id(node)] = seen
            self._facts = facts
            found = pools_from_facts([facts[id(n)][1] for n in nodes], pods, declared, self.catalog)
            self._last = (list(nodes), pods + gpu_node_pools, found)
            return found


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
