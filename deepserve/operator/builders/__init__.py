"""Pure manifest builders: typed input in, Kubernetes objects (dicts) out, no I/O."""

from __future__ import annotations

from typing import Any

from deepserve.operator.builders.context import (
    BuildContext,
    ChosenPlacement,
    ModelRef,
    Settings,
    child_name,
    labels,
)
from deepserve.operator.builders.deployment import build_deployment
from deepserve.operator.builders.leaderworkerset import build_workload
from deepserve.operator.builders.network_policy import build_network_policy
from deepserve.operator.builders.networking import (
    build_httproute,
    build_model_service,
    build_pdb,
    build_version_service,
)
from deepserve.operator.builders.repository import build_repository_configmap, engine_options


def build_children(ctx: BuildContext) -> list[dict[str, Any]]:
    """Every object a model owns, in apply order (the NetworkPolicy and ConfigMaps before the
    Deployments, so no engine pod is ever reachable unguarded)."""
    out: list[dict[str, Any]] = []
    if ctx.settings.engine_policy is not None:
        out.append(build_network_policy(ctx, ctx.settings.engine_policy))
    for v in ctx.spec.versions:
        out.append(build_repository_configmap(ctx, v.name))
    for v in ctx.spec.versions:
        out.append(build_workload(ctx, v.name))  # a LeaderWorkerSet when it spans nodes
        out.append(build_version_service(ctx, v.name))
        out.append(build_pdb(ctx, v.name))
    out.append(build_model_service(ctx))
    if ctx.settings.gateway_api:
        out.append(build_httproute(ctx))
    return out


__all__ = [
    "BuildContext",
    "ChosenPlacement",
    "ModelRef",
    "Settings",
    "build_children",
    "build_deployment",
    "build_httproute",
    "build_model_service",
    "build_network_policy",
    "build_pdb",
    "build_repository_configmap",
    "build_version_service",
    "child_name",
    "engine_options",
    "labels",
]
