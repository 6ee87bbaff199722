"""Pool capacity: cap a scale-up at what the planned pool can hold, and say so.

Pool offers come from the placement planner's ``discover_pools`` (``free_gpus`` already
counts every scheduled GPU pod, the model's own included). A pool that can add nodes
(``max_nodes > nodes``, e.g. a Karpenter or cluster-autoscaler pool) has room for the
nodes it may still add. When the pool is full, the verdict carries a status message and,
when moving is allowed, the next pool from the planner's ranked alternatives that fits
the whole demand. Pools already tried are never proposed again, so a model cannot bounce
between full pools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class PoolLike(Protocol):
    """The fields of ``placement.PoolOffer`` used here."""

    @property
    def name(self) -> str: ...
    @property
    def gpus_per_node(self) -> int: ...
    @property
    def nodes(self) -> int: ...
    @property
    def free_gpus(self) -> int: ...
    @property
    def max_nodes(self) -> int: ...


@dataclass(frozen=True)
class CapacityVerdict:
    """Replicas that fit, a status message when capped, and a pool to move to (or None)."""

    replicas: int
    message: str | None = None
    move_to: str | None = None


def replica_room(pool: PoolLike, gpus_per_replica: int) -> int:
    """More replicas the pool can take now, counting nodes it may still add."""
    gpr = max(1, gpus_per_replica)
    grow = max(0, pool.max_nodes - pool.nodes) * (pool.gpus_per_node // gpr)
    return max(0, pool.free_gpus) // gpr + grow


def check_capacity(want: int, current: int, scheduled: int, gpus_per_replica: int, pool: PoolLike | None,
                   ranked: Iterable[Any] = (), offers: Mapping[str, PoolLike] | None = None,
                   allow_move: bool = False, tried: frozenset[str] = frozenset()) -> CapacityVerdict:
    """Cap ``want`` at what ``pool`` fits.

    ``scheduled`` is the model's pods that hold GPUs already (bound to a node);
    ``ranked`` the planner's candidates (``pool``, ``gpus_per_replica``,
    ``rejected_reason``) in order of preference; ``offers`` pool name -> offer.
    Scale-down and unknown pools pass through unchanged.
    """
    if pool is None or want <= current:
        return CapacityVerdict(want)
    fits = scheduled + replica_room(pool, gpus_per_replica)
    if want <= fits:
        return CapacityVerdict(want)
    capped = max(fits, current)
    message = (f"NoCapacity: pool {pool.name} has room for {fits} replica(s) of {gpus_per_replica} GPU(s) "
               f"({pool.free_gpus} free GPUs); load needs {want}, keeping {capped}")
    if not allow_move:
        return CapacityVerdict(capped, message + "; moving to another pool is not allowed")
    offers = offers or {}
    for cand in ranked:
        name = getattr(cand, "pool", None)
        if not name or name == pool.name or name in tried or getattr(cand, "rejected_reason", None):
            continue
        offer = offers.get(name)
        if offer is not None and replica_room(offer, int(cand.gpus_per_replica)) >= want:
            return CapacityVerdict(capped, message + f"; next pool {name} fits {want}", move_to=name)
    return CapacityVerdict(capped, message + "; no alternative pool fits either")
