"""RBAC is least privilege: exactly the rules the operator uses, no wildcards, no Secrets."""

from __future__ import annotations

from typing import Any

import pytest

from deepserve.operator.controller import handlers

# The gateway's own ServiceAccount and RBAC (it reads key Secrets through a Role in the keys
# namespace) are tested in test_chart_gateway.py; these tests are the operator's.
from .conftest import is_gateway

pytestmark = pytest.mark.unit

CRUD = {"get", "list", "watch", "create", "patch", "delete"}
READ = {"get", "list", "watch"}

# (apiGroup, resource) -> verbs. A new permission must be added here on purpose.
CLUSTER_RULES = {
    ("deepserve.io", "gpunodepools"): READ | {"patch"},
    ("deepserve.io", "gpunodepools/status"): {"get", "patch"},
    ("", "nodes"): READ,
    ("apiextensions.k8s.io", "customresourcedefinitions"): READ,
    ("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "create", "get", "patch"},
}
WORKLOAD_RULES = {
    ("deepserve.io", "inferencemodels"): READ | {"patch"},
    ("deepserve.io", "inferencemodels/status"): {"get", "patch"},
    ("deepserve.io", "inferencemodels/scale"): {"get", "update", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"list"},
    ("apps", "deployments"): CRUD,
    ("", "services"): CRUD,
    ("", "configmaps"): CRUD,
    ("policy", "poddisruptionbudgets"): CRUD,
    ("networking.k8s.io", "networkpolicies"): CRUD,
    ("gateway.networking.k8s.io", "httproutes"): CRUD,
    ("leaderworkerset.x-k8s.io", "leaderworkersets"): CRUD,
    ("", "pods"): READ,
    ("", "secrets"): {"create", "patch"},  # per-model usage write credentials, never read
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


def _rules(obj: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in obj["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def _role(out, suffix: str) -> dict[str, Any]:
    return next(r for r in out.of_kind("ClusterRole") if r["metadata"]["name"].endswith(suffix))


def test_rules_are_exactly_what_the_operator_uses(render) -> None:
    out = render()
    assert _rules(_role(out, "-cluster")) == CLUSTER_RULES
    assert _rules(_role(out, "-workloads")) == WORKLOAD_RULES
    assert not [r for r in out.of_kind("Role") if not is_gateway(r)]


def test_no_wildcards_and_no_secrets_anywhere(render, all_features) -> None:
    for values in (None, all_features):
        out = render(values)
        for obj in [o for o in out.of_kind("ClusterRole") + out.of_kind("Role") if not is_gateway(o)]:
            for rule in obj["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), (obj["metadata"]["name"], rule)
                if "secrets" in rule["resources"]:  # tokens are mounted; it writes usage credentials only
                    assert set(rule["verbs"]) == {"create", "patch"}, (obj["metadata"]["name"], rule)
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_peering_is_limited_to_its_object_by_name(render) -> None:
    rules = _role(render(), "-cluster")["rules"]
    by_name = [r for r in rules if r["apiGroups"] == ["kopf.dev"] and r.get("resourceNames")]
    assert by_name == [{"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"],
                        "resourceNames": ["deepserve"], "verbs": ["get", "patch"]}]
    standalone = render({"replicaCount": 1, "operator": {"peering": {"enabled": False}}})
    assert ("kopf.dev", "clusterkopfpeerings") not in _rules(_role(standalone, "-cluster"))


def test_watched_namespaces_get_rolebindings_instead_of_cluster_wide_grants(render) -> None:
    out = render({"replicaCount": 1, "operator": {"watchNamespaces": ["team-a", "team-b"],
                                                  "peering": {"enabled": False}}})
    workloads = _role(out, "-workloads")["metadata"]["name"]
    bindings = [b for b in out.of_kind("RoleBinding") if not is_gateway(b)]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": workloads} for b in bindings)
    cluster_bound = {b["roleRef"]["name"] for b in out.of_kind("ClusterRoleBinding") if not is_gateway(b)}
    assert workloads not in cluster_bound and len(cluster_bound) == 1
    sa = out.one("ServiceAccount")["metadata"]
    for b in bindings + [b for b in out.of_kind("ClusterRoleBinding") if not is_gateway(b)]:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]


def test_gateway_api_off_drops_httproutes(render) -> None:
    rules = _rules(_role(render({"operator": {"gatewayApi": {"enabled": False}}}), "-workloads"))
    assert ("gateway.networking.k8s.io", "httproutes") not in rules


def test_every_kind_the_operator_watches_and_writes_is_granted(render) -> None:
    rules = _rules(_role(render(), "-workloads"))
    for plural, (group, _version) in handlers.CHILD_KINDS.items():
        assert {"list", "watch", "create", "patch", "delete"} <= rules[(group, plural)], plural
    group, _version, plural = handlers.ROUTES
    assert {"list", "watch", "create", "patch", "delete"} <= rules[(group, plural)]


def test_rbac_off_renders_no_roles(render) -> None:
    out = render({"rbac": {"create": False}})
    assert not out.of_kind("ClusterRole") and not out.of_kind("ClusterRoleBinding")
    assert out.of_kind("Deployment")
