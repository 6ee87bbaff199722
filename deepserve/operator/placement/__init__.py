"""Placement: which pool, precision and tensor-parallel degree serve a model best.

Pure functions over plain data; the operator feeds it Kubernetes objects as dicts::

    pools = discover_pools(nodes, pods, gpu_node_pools).pools
    plan = plan_placement(ModelShape.from_hf_config(cfg), pools, PlacementRequest())
    plan.chosen.pool, plan.chosen.tensor_parallel, plan.reason
"""

from deepserve.operator.placement.discovery import PoolDiscovery
from deepserve.operator.placement.estimate import Estimate, Workload, estimate
from deepserve.operator.placement.factors import DEFAULT_FACTORS, EfficiencyFactors
from deepserve.operator.placement.planner import (
    Candidate,
    PlacementPlan,
    PlacementRequest,
    plan_placement,
    serving_precision,
    strategy_key,
    valid_split,
)
from deepserve.operator.placement.pools import (
    DiscoveredPools,
    PoolOffer,
    discover_pools,
    pod_gpus,
    pools_from_document,
    with_reservations,
)
from deepserve.operator.placement.shape import ModelShape, ShapeError

__all__ = [
    "DEFAULT_FACTORS",
    "Candidate",
    "DiscoveredPools",
    "EfficiencyFactors",
    "Estimate",
    "ModelShape",
    "PlacementPlan",
    "PlacementRequest",
    "PoolDiscovery",
    "PoolOffer",
    "ShapeError",
    "Workload",
    "discover_pools",
    "estimate",
    "plan_placement",
    "pod_gpus",
    "pools_from_document",
    "serving_precision",
    "strategy_key",
    "valid_split",
    "with_reservations",
]
