"""The chart lints clean and renders what a user relies on, with defaults and every feature on."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from deepserve.operator.cli import build_parser

pytestmark = pytest.mark.unit
NAMESPACE = "deepserve-system"  # the namespace conftest renders into

DEFAULT_KINDS = {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
                 "PersistentVolumeClaim", "Secret", "NetworkPolicy", "PodDisruptionBudget",
                 "Role", "RoleBinding"}  # the gateway's (on by default) Secrets Role in the keys namespace
# the operator's Secret writes narrowed to usage credentials (secret-write-policy.yaml)
DEFAULT_KINDS |= {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_lint_is_clean_with_defaults_and_all_features(lint, chart_copy, all_features) -> None:
    for values, chart in ((None, None), (all_features, chart_copy(dashboard=True))):
        proc = lint(values, chart=chart) if chart else lint(values)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_defaults_render_the_operator_and_nothing_optional(render) -> None:
    out = render()
    assert out.returncode == 0, out.stderr
    assert {d["kind"] for d in out.docs} == DEFAULT_KINDS
    assert not out.of_kind("ServiceMonitor") and not out.of_kind("ConfigMap")
    assert all(d["metadata"].get("namespace", NAMESPACE) == NAMESPACE for d in out.docs)


def test_every_feature_on_renders_monitoring_and_dashboards(render, chart_copy, all_features) -> None:
    chart = chart_copy(dashboard=True)
    out = render(all_features, chart=chart)
    assert out.returncode == 0, out.stderr
    kinds = {d["kind"] for d in out.docs}
    assert DEFAULT_KINDS | {"ServiceMonitor", "ConfigMap"} <= kinds
    dash = out.one("ConfigMap")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dash["data"]) == {p.name for p in (chart / "dashboards").glob("*.json")}
    monitor = out.one("ServiceMonitor")["spec"]["endpoints"][0]
    assert monitor["port"] == "billing" and monitor["path"] == "/metrics"
    assert monitor["authorization"]["credentials"]["name"] == out.one("Secret")["metadata"]["name"]
    image = out.containers()["operator"]["image"]
    assert image.endswith("@sha256:" + "a" * 64)


def test_dashboard_without_files_fails_with_a_message(render, chart_copy) -> None:
    chart = chart_copy()
    for f in (chart / "dashboards").glob("*.json"):
        f.unlink()
    out = render({"grafanaDashboard": {"enabled": True}}, chart=chart)
    assert out.returncode != 0
    assert "grafanaDashboard.enabled is true but the chart has no dashboards/*.json" in out.stderr


def _hardened(ctx: dict[str, Any]) -> None:
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["privileged"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


def test_pods_are_non_root_read_only_and_confined(render) -> None:
    out = render({"runAsUser": 1234})
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod["volumes"])
    for c in pod["containers"]:
        _hardened(c["securityContext"])
        assert c["securityContext"]["runAsUser"] == 1234
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts and "/var/lib/deepserve" in mounts  # writable places only


def _parse(cli: list[str], args: list[str]):
    return build_parser().parse_args([*cli, *args])


def test_operator_args_are_accepted_by_the_real_cli(render) -> None:
    c = render().containers()
    args = _parse(["operator", "run"], c["operator"]["args"])
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    assert args.namespace == [] and not args.standalone and args.peering == "deepserve"
    assert args.engine_image == "ghcr.io/deepserve/engine:0.1.0"
    assert args.usage_endpoint == (
        f"http://ds-deepserve-billing.{NAMESPACE}.svc.cluster.local:8080/v1/usage/events")
    assert args.gateway_api == "auto"
    assert c["operator"]["ports"][0]["containerPort"] == 8081
    billing = _parse(c["billing"]["command"][1:], c["billing"]["args"])
    assert (billing.host, billing.port) == ("0.0.0.0", 8080)
    assert billing.ledger == "/var/lib/deepserve/ledger.db"
    assert billing.token_file == "/var/run/secrets/deepserve/billing/token"


def test_watched_namespaces_standalone_and_gateway_flags(render) -> None:
    out = render({"replicaCount": 1, "operator": {
        "watchNamespaces": ["team-a", "team-b"], "peering": {"enabled": False},
        "gatewayApi": {"enabled": False}, "extraArgs": ["--resync-seconds=15"]}})
    assert out.returncode == 0, out.stderr
    args = _parse(["operator", "run"], out.containers()["operator"]["args"])
    assert args.namespace == ["team-a", "team-b"] and args.standalone
    assert args.gateway_api == "off" and args.resync_seconds == 15.0


def test_billing_token_secret_is_generated_or_taken_from_an_existing_one(render) -> None:
    out = render()
    secret = out.one("Secret")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 48 and token.isalnum()
    ingest_key = base64.b64decode(secret["data"]["ingestKey"]).decode()  # write credentials
    assert len(ingest_key) == 64 and ingest_key != token
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert render().one("Secret")["data"]["token"] != secret["data"]["token"]  # random per install

    out = render({"billing": {"token": {"existingSecret": "my-token", "secretKey": "bearer"}}})
    assert not out.of_kind("Secret")
    volumes = {v["name"]: v for v in out.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["billing-token"]["secret"]["secretName"] == "my-token"
    assert volumes["billing-token"]["secret"]["items"] == [{"key": "bearer", "path": "token"}]
    assert volumes["ingest-key"]["secret"]["secretName"] == "my-token"
    assert volumes["ingest-key"]["secret"]["items"] == [{"key": "ingestKey", "path": "ingest-key"}]


def test_ledger_volume_and_same_node_affinity_for_rwo(render) -> None:
    out = render()
    pvc = out.one("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"

    single = render({"replicaCount": 1}).one("Deployment")["spec"]["template"]["spec"]
    assert "affinity" not in single
    off = render({"persistence": {"enabled": False}})
    assert not off.of_kind("PersistentVolumeClaim")
    assert "emptyDir" in next(v for v in off.one("Deployment")["spec"]["template"]["spec"]["volumes"]
                              if v["name"] == "state")


def test_billing_service_networkpolicy_and_pdb_select_the_operator(render) -> None:
    out = render()
    selector = out.one("Deployment")["spec"]["selector"]["matchLabels"]
    svc = out.one("Service")
    assert svc["spec"]["selector"] == selector
    assert svc["spec"]["ports"] == [{"name": "billing", "port": 8080, "targetPort": "billing", "protocol": "TCP"}]
    assert out.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    policy = out.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == selector
    billing_rule = next(r for r in policy["ingress"] if r["ports"][0]["port"] == "billing")
    assert billing_rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "deepserve-engine"}
