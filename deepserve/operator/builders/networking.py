"""Services, the PodDisruptionBudget and the Gateway API HTTPRoute of a model."""

from __future__ import annotations

from typing import Any

from deepserve.operator.builders.context import (
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    BuildContext,
    child_name,
    metadata,
    selector,
)

VERSION_HEADER = "x-deepserve-version"
_PORTS = [
    {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
    {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"},
]


def _service(ctx: BuildContext, name: str, version: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, name, version),
        "spec": {"type": "ClusterIP", "selector": selector(ctx.model.name, version),
                 "ports": [dict(p) for p in _PORTS]},
    }


def build_model_service(ctx: BuildContext) -> dict[str, Any]:
    """The Service named after the model, selecting every version's pods."""
    return _service(ctx, ctx.model.name, None)


def build_version_service(ctx: BuildContext, version: str) -> dict[str, Any]:
    """The Service of one version (``<model>-<version>``), the HTTPRoute's backend."""
    return _service(ctx, child_name(ctx.model.name, version), version)


def build_pdb(ctx: BuildContext, version: str) -> dict[str, Any]:
    """One pod of a version may be disrupted at a time; unready pods never block a drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ctx, child_name(ctx.model.name, version), version),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(ctx.model.name, version)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_httproute(ctx: BuildContext) -> dict[str, Any]:
    """An HTTPRoute splitting the model's traffic by version weight.

    A request with header ``x-deepserve-version: <name>`` goes to that version only (for
    A/B tests and smoke tests of a zero-weight version).
    """
    name = ctx.model.name
    rules: list[dict[str, Any]] = []
    for v in ctx.spec.versions:
        rules.append({
            "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                         "headers": [{"type": "Exact", "name": VERSION_HEADER, "value": v.name}]}],
            "backendRefs": [{"name": child_name(name, v.name), "port": HTTP_PORT}],
        })
    rules.append({
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [{"name": child_name(name, v.name), "port": HTTP_PORT, "weight": v.weight}
                        for v in ctx.spec.versions],
    })
    spec: dict[str, Any] = {"rules": rules}
    if ctx.settings.gateway_parent:
        ns, gw = ctx.settings.gateway_parent
        spec["parentRefs"] = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": ns,
                               "name": gw}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(ctx, name, None),
        "spec": spec,
    }
