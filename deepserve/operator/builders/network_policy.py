"""The NetworkPolicy of a model's engine pods (issue #20.2): only the gateway, the operator and
metrics scraping reach them.

Ingress is allowed from (NetworkPolicy peers, https://kubernetes.io/docs/concepts/services-networking/network-policies/):

- the release's gateway pods (``app.kubernetes.io/component=gateway`` in the release namespace)
  on the serving ports (Triton HTTP and gRPC, the OpenAI frontend);
- the release's operator pods (``app.kubernetes.io/component=operator``) on every engine port
  (the autoscaler and GPU-time metering scrape metrics, the activator probes readiness);
- metrics scrapers (``EnginePolicy.metrics_labels`` in ``metrics_namespace``, any namespace when
  unset) on the metrics port only;
- the model's own pods on any port (the ranks of a multi-node replica talk to each other).

Everything else is dropped where the network plugin enforces NetworkPolicy. Egress is not
restricted (sources are fetched from S3 / the Hub).
"""

from __future__ import annotations

from typing import Any

from deepserve.operator.builders.context import (
    GRPC_PORT,
    HTTP_PORT,
    LABEL_MODEL,
    METRICS_PORT,
    OPENAI_PORT,
    BuildContext,
    EnginePolicy,
    metadata,
)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
COMPONENT_LABEL = "app.kubernetes.io/component"
SERVING_PORTS = (HTTP_PORT, GRPC_PORT, OPENAI_PORT)
ENGINE_PORTS = (HTTP_PORT, GRPC_PORT, METRICS_PORT, OPENAI_PORT)


def _ports(numbers: tuple[int, ...]) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": n} for n in numbers]


def _release_peer(policy: EnginePolicy, component: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: policy.release_namespace}},
            "podSelector": {"matchLabels": {COMPONENT_LABEL: component}}}


def _metrics_peer(policy: EnginePolicy) -> dict[str, Any]:
    namespaces = ({"matchLabels": {NAMESPACE_NAME_LABEL: policy.metrics_namespace}}
                  if policy.metrics_namespace else {})
    return {"namespaceSelector": namespaces, "podSelector": {"matchLabels": dict(policy.metrics_labels)}}


def network_policy_name(model: str) -> str:
    """The policy is named after the model (one per model, covering every version)."""
    return f"{model}-engine"


def build_network_policy(ctx: BuildContext, policy: EnginePolicy) -> dict[str, Any]:
    """The NetworkPolicy selecting every pod of the model."""
    own_pods = {LABEL_MODEL: ctx.model.name}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx, network_policy_name(ctx.model.name), None),
        "spec": {
            "podSelector": {"matchLabels": own_pods},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [_release_peer(policy, "gateway")], "ports": _ports(SERVING_PORTS)},
                {"from": [_release_peer(policy, "operator")], "ports": _ports(ENGINE_PORTS)},
                {"from": [_metrics_peer(policy)], "ports": _ports((METRICS_PORT,))},
                {"from": [{"podSelector": {"matchLabels": own_pods}}]},
            ],
        },
    }
