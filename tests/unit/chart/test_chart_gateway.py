"""The chart's gateway: Deployment (2 replicas, probes, secrets from files), Service, PDB, RBAC."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.unit
NAMESPACE = "deepserve-system"  # the namespace conftest renders into


def _gateway(out: Any, kind: str) -> dict[str, Any]:
    found = [d for d in out.of_kind(kind) if d["metadata"]["name"].endswith("-gateway")
             or d["metadata"]["name"].endswith("-gateway-keys")]
    assert len(found) == 1, f"expected one gateway {kind}, got {len(found)}"
    return found[0]


def test_on_by_default_and_off_on_request(render) -> None:
    out = render()
    assert out.returncode == 0, out.stderr
    assert _gateway(out, "Deployment")["spec"]["replicas"] == 2
    off = render({"gateway": {"enabled": False}})
    assert off.returncode == 0, off.stderr
    assert not [d for d in off.docs if "gateway" in d["metadata"]["name"]]
    assert off.one("Deployment")  # the operator still renders


@pytest.mark.parametrize("values", [None, {"gateway": {"enabled": True}}])
def test_gateway_renders_what_a_front_door_needs(render, lint, values: dict[str, Any] | None) -> None:
    proc = lint(values)
    assert proc.returncode == 0 and "[WARNING]" not in proc.stdout, proc.stdout + proc.stderr
    out = render(values)
    assert out.returncode == 0, out.stderr
    dep = _gateway(out, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "gateway"
    assert dep["spec"]["selector"]["matchLabels"] == {k: labels[k] for k in dep["spec"]["selector"]["matchLabels"]}
    (c,) = pod["containers"]
    args = c["args"]
    assert c["command"] == ["deepserve", "gateway", "run"]
    assert f"--keys-namespace={NAMESPACE}" in args and "--listen=0.0.0.0:8080" in args
    assert any(a.startswith("--billing-token-file=/") for a in args)
    assert not any("token=" in a and "file" not in a for a in args)  # no secret in argv
    assert not any(a.startswith("--tls") for a in args)
    assert "--admin-listen=0.0.0.0:9090" in args  # /metrics off the public port
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"gateway": 8080, "metrics": 9090}
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert not any(a.startswith("--redis") for a in args)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"].endswith("-gateway")

    svc = _gateway(out, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "gateway"
    # /metrics on a Service of its own (the admin port), never on the public Service.
    metrics_svc = next(d for d in out.of_kind("Service") if d["metadata"]["name"].endswith("-gateway-metrics"))
    assert metrics_svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in metrics_svc["spec"]["ports"]] == [
        ("metrics", 9090, "metrics")]
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["gateway"]
    assert not out.of_kind("ServiceMonitor")  # only with serviceMonitor.enabled
    pdb = _gateway(out, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]

    rules = {(tuple(r["apiGroups"]), res): set(r["verbs"])
             for r in _gateway(out, "ClusterRole")["rules"] for res in r["resources"]}
    assert rules[(("deepserve.io",), "tenants")] == {"get", "list", "watch"}
    assert rules[(("deepserve.io",), "inferencemodels")] == {"get", "list", "watch"}
    assert rules[(("",), "pods")] == {"get", "list", "watch"}
    assert (("",), "secrets") not in rules  # Secrets only through the namespaced Role
    role = _gateway(out, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]
    binding = _gateway(out, "RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]

    # The operator's NetworkPolicy lets the gateway read spend on the billing port.
    policy = out.one("NetworkPolicy")
    peers = [p for rule in policy["spec"]["ingress"] for p in rule.get("from", [])]
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
               == "gateway" for p in peers)


def test_tls_redis_and_namespaces(render) -> None:
    out = render({"gateway": {"enabled": True, "tls": {"secretName": "gw-tls"}, "keysNamespace": "keys",
                              "redis": {"existingSecret": "limits-redis"},
                              "watchNamespaces": ["team-a", "team-b"], "replicaCount": 3}})
    assert out.returncode == 0, out.stderr
    dep = _gateway(out, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert dep["spec"]["replicas"] == 3
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--keys-namespace=keys" in args
    assert any(a.startswith("--tls-cert-file=") for a in args) and any(a.startswith("--tls-key-file=") for a in args)
    assert {"name": "tls", "secret": {"secretName": "gw-tls", "defaultMode": 0o440}} in pod["volumes"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert _gateway(out, "Role")["metadata"]["namespace"] == "keys"
    redis_arg = next(a for a in args if a.startswith("--redis-url-file="))
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "redis")
    assert redis_arg == "--redis-url-file=" + mount["mountPath"] + "/url"
    assert {"name": "redis", "secret": {"secretName": "limits-redis", "defaultMode": 0o440,
                                        "items": [{"key": "url", "path": "url"}]}} in pod["volumes"]


@pytest.mark.parametrize(("values", "path"), [
    ({"gateway": {"enabled": True, "replicaCount": 0}}, "/gateway/replicaCount"),
    ({"gateway": {"enabled": True, "keyRefreshSeconds": 30}}, "/gateway/keyRefreshSeconds"),
    ({"gateway": {"enabled": True, "keysNamespace": "Bad_NS"}}, "/gateway/keysNamespace"),
    ({"gateway": {"enabled": True, "tls": {"secret": "x"}}}, "/gateway/tls"),
    ({"gateway": {"replicas": 2}}, "/gateway"),
])
def test_bad_gateway_values_fail_naming_the_key(render, values: dict[str, Any], path: str) -> None:
    out = render(values)
    assert out.returncode != 0 and path in out.stderr, out.stderr


def test_service_monitor_scrapes_the_gateway_metrics_port(render) -> None:
    out = render({"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}})
    assert out.returncode == 0, out.stderr
    monitor = next(d for d in out.of_kind("ServiceMonitor") if d["metadata"]["name"].endswith("-gateway"))
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    metrics_svc = next(d for d in out.of_kind("Service") if d["metadata"]["name"].endswith("-gateway-metrics"))
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(metrics_svc["metadata"]["labels"].get(k) == v for k, v in selector.items())
    public = _gateway(out, "Service")
    assert not all(public["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
