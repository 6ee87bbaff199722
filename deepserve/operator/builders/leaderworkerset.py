"""A LeaderWorkerSet for a replica larger than one node (the planner's nodesPerReplica > 1).

Upstream API ``leaderworkerset.x-k8s.io/v1`` (https://github.com/kubernetes-sigs/lws,
``api/leaderworkerset/v1/leaderworkerset_types.go``): each of ``spec.replicas`` groups is a
leader pod and ``size - 1`` worker pods, one per node. The leader is the Deployment's Triton
pod (rank 0 serves and starts its own node's ranks); each worker runs the node agent
(``python -m deepserve.engine.parallel.node``), whose ranks join the leader's
``torch.distributed`` world through ``LWS_LEADER_ADDRESS`` / ``LWS_GROUP_SIZE`` /
``LWS_WORKER_INDEX``, which the LWS controller sets. ``RecreateGroupOnPodRestart`` restarts
the whole group when any member fails (a rank cannot rejoin a running world); the CRD's
scale subresource counts groups, so the autoscaler scales groups. Workers expose no
``http``/``grpc`` ports, so the version's Services (named target ports) reach leaders only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

from deepserve.operator.builders.context import BuildContext, version_of
from deepserve.operator.builders.deployment import build_deployment
from deepserve.operator.builders.repository import engine_options
from deepserve.operator.placement.gpus import is_gpu_resource

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_KIND = "LeaderWorkerSet"
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
LABEL_ROLE = "deepserve.io/role"
MASTER_PORT = 29500  # the leader's rendezvous store (DEEPSERVE_MASTER_PORT)
WORKER_COMMAND = ["python", "-m", "deepserve.engine.parallel.node"]
Workload = Literal["Deployment", "LeaderWorkerSet"]


def nodes_per_replica(placement: Any) -> int:
    """Nodes one replica spans: a ChosenPlacement's field or a status dict's key (default 1)."""
    if isinstance(placement, Mapping):
        value = placement.get("nodesPerReplica", 1)
    else:
        value = getattr(placement, "nodes_per_replica", 1)
    return max(1, int(value or 1))


def choose_workload(placement: Any) -> Workload:
    """``LeaderWorkerSet`` when a replica spans more than one node, else ``Deployment``."""
    return "LeaderWorkerSet" if nodes_per_replica(placement) > 1 else "Deployment"


def lws_missing_reason(placement: Any) -> str:
    """The ``Scheduled=False`` reason when a multi-node placement meets a cluster without LWS."""
    nodes = nodes_per_replica(placement)
    return (f"LeaderWorkerSetNotInstalled: the placement needs {nodes} nodes per replica, "
            f"which deepserve serves as a LeaderWorkerSet, but the {LWS_CRD} API is not "
            "installed (install the LWS controller, e.g. the chart's lws.enabled=true)")


def _set_gpus(container: dict[str, Any], gpus: int) -> None:
    for part in ("requests", "limits"):
        section = container.setdefault("resources", {}).setdefault(part, {})
        for name in section:
            if is_gpu_resource(name):
                section[name] = str(gpus)


def _pod(template: dict[str, Any], role: str) -> dict[str, Any]:
    pod = copy.deepcopy(template)
    pod["metadata"]["labels"][LABEL_ROLE] = role
    return pod


def build_leaderworkerset(ctx: BuildContext, version: str) -> dict[str, Any]:
    """The LeaderWorkerSet serving ``version``: groups of ``nodesPerReplica`` pods."""
    deployment = build_deployment(ctx, version)
    nodes = nodes_per_replica(ctx.placement)
    gpus_per_node = ctx.placement.gpus_per_replica // nodes
    template = deployment["spec"]["template"]
    port_env = {"name": "DEEPSERVE_MASTER_PORT", "value": str(MASTER_PORT)}

    leader = _pod(template, "leader")
    triton = leader["spec"]["containers"][0]
    _set_gpus(triton, gpus_per_node)
    triton["env"] = [*triton.get("env", []), port_env]
    triton["ports"] = [*triton["ports"], {"name": "ranks", "containerPort": MASTER_PORT,
                                          "protocol": "TCP"}]

    worker = _pod(template, "worker")
    ranks = worker["spec"]["containers"][0]
    _set_gpus(ranks, gpus_per_node)
    ranks.update(name="ranks", command=list(WORKER_COMMAND), args=[], ports=[])
    for key in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
        ranks.pop(key, None)
    options = engine_options(ctx, version_of(ctx, version)).to_json()
    ranks["env"] = [*ranks.get("env", []), port_env,
                    {"name": "DEEPSERVE_ENGINE_OPTIONS", "value": options}]

    metadata = deployment["metadata"]
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": LWS_KIND,
        "metadata": metadata,
        "spec": {
            "replicas": deployment["spec"]["replicas"],
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {
                "maxUnavailable": 0, "maxSurge": 1}},
            "leaderWorkerTemplate": {
                "size": nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def build_workload(ctx: BuildContext, version: str) -> dict[str, Any]:
    """The Deployment or LeaderWorkerSet serving ``version`` (see :func:`choose_workload`)."""
    if choose_workload(ctx.placement) == "LeaderWorkerSet":
        return build_leaderworkerset(ctx, version)
    return build_deployment(ctx, version)
