"""The GPUNodePool schema (deepserve.io/v1alpha1, cluster-scoped): the one source of truth."""

from __future__ import annotations

from typing import Any

from deepserve.operator.api.inferencemodel_schema import TOLERATION
from deepserve.operator.api.schema_types import (
    array,
    condition_schema,
    integer,
    label_map,
    number,
    obj,
    rule,
    string,
)

MAX_PRICE_PER_GPU_HOUR = 1e6  # far above any list price; 1e308 would overflow cost per token

SPEC = obj(
    "A pool of identical GPU nodes that the planner may place models on.",
    {
        "nodeSelector": {
            **label_map("Labels that select this pool's nodes; placed pods get this nodeSelector.",
                        "nodeSelector"),
            "minProperties": 1,
        },
        "acceleratorId": string("Accelerator id from the deepserve hardware knowledge base, e.g. "
                                "nvidia-h100-sxm5-80gb (`deepserve plan accelerators` lists them).",
                                pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=128),
        "gpusPerNode": integer("GPUs on each node.", minimum=1, maximum=64),
        "maxNodes": integer("Most nodes the pool can grow to (cluster autoscaler / Karpenter); 0 = only "
                            "the nodes that exist.", minimum=0, maximum=100000, default=0),
        "pricePerGpuHour": number("Price of one GPU for one hour, used for cost per token.", minimum=0,
                                  maximum=MAX_PRICE_PER_GPU_HOUR, default=0),
        "currency": string("ISO 4217 currency of the price.", pattern=r"^[A-Z]{3}$", default="USD",
                           max_length=3),
        "tolerations": array("Tolerations pods placed on this pool need (beyond nvidia.com/gpu).",
                             TOLERATION, max_items=16),
    },
    required=["nodeSelector", "acceleratorId", "gpusPerNode"],
)

MAX_POOL_NAME = 63
ROOT_RULES = [
    rule(f"size(self.metadata.name) <= {MAX_POOL_NAME}",
         f"metadata.name must be at most {MAX_POOL_NAME} characters: it is the deepserve.io/pool label "
         "of the pods placed on the pool, and a label value"),
]

STATUS = obj(
    "Observed capacity of the pool.",
    {
        "observedGeneration": integer("The .metadata.generation the status reflects.", minimum=0),
        "nodes": integer("Nodes matching the selector.", minimum=0),
        "readyNodes": integer("Ready nodes.", minimum=0),
        "totalGpus": integer("GPUs on matching nodes.", minimum=0),
        "freeGpus": integer("GPUs not requested by running pods.", minimum=0),
        "conditions": array("Ready: the accelerator is known and nodes exist or can be created.",
                            condition_schema(), max_items=8, list_type="map", map_keys=["type"]),
    },
)

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Accelerator", "type": "string", "jsonPath": ".spec.acceleratorId", "description": "Accelerator."},
    {"name": "GPUs/Node", "type": "integer", "jsonPath": ".spec.gpusPerNode", "description": "GPUs per node."},
    {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes", "description": "Matching nodes."},
    {"name": "Free", "type": "integer", "jsonPath": ".status.freeGpus", "description": "Free GPUs."},
    {"name": "Price", "type": "number", "jsonPath": ".spec.pricePerGpuHour", "description": "Per GPU-hour."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
