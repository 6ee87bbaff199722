"""The chart against the real API server: server-side dry runs, schema errors at install time,
and the installed RBAC granting what the operator needs and nothing more."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepserve.operator.dev import toolchain

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHART = Path(__file__).resolve().parents[3] / "charts" / "deepserve"
KUBE_VERSION = toolchain.KUBERNETES_VERSION.lstrip("v")


def _helm(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig, HELM_CACHE_HOME="/tmp/deepserve-helm-cache",
               HELM_CONFIG_HOME="/tmp/deepserve-helm-config", HELM_DATA_HOME="/tmp/deepserve-helm-data")
    return subprocess.run([cluster.helm, *args], env=env, capture_output=True, text=True, timeout=180,
                          check=False)


def _template(cluster: Any, namespace: str, values: dict[str, Any], tmp: Path, chart: Path = CHART) -> str:
    vfile = tmp / "values.yaml"
    vfile.write_text(yaml.safe_dump(values))
    proc = _helm(cluster, "template", "ds", str(chart), "--namespace", namespace, "-f", str(vfile),
                 "--kube-version", KUBE_VERSION)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _served(cluster: Any, group: str) -> bool:
    out = cluster.run_kubectl("api-resources", f"--api-group={group}", "-o", "name").stdout
    return bool(out.strip())


@pytest.fixture(scope="module")
def crds_installed(cluster: Any) -> None:
    """The chart's CRDs on the server (as `helm install` would put them there first)."""
    if list((CHART / "crds").glob("*.yaml")):
        cluster.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))


def _dry_run(cluster: Any, manifest: str) -> subprocess.CompletedProcess[str]:
    return cluster.run_kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)


def test_defaults_pass_a_server_side_dry_run(cluster, namespace, crds_installed, tmp_path) -> None:
    manifest = _template(cluster, namespace, {}, tmp_path)
    proc = _dry_run(cluster, manifest)
    assert proc.returncode == 0, proc.stderr
    assert "deployment.apps/ds-deepserve created (server dry run)" in proc.stdout


def test_every_feature_passes_a_server_side_dry_run(cluster, namespace, crds_installed, tmp_path) -> None:
    chart = tmp_path / "deepserve"
    shutil.copytree(CHART, chart)
    dash = chart / "dashboards"
    dash.mkdir(exist_ok=True)
    if not list(dash.glob("*.json")):
        (dash / "test.json").write_text('{"title": "test"}\n')
    values = {"serviceMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True},
              "networkPolicy": {"billingFrom": [{"podSelector": {"matchLabels": {"app": "billing"}}}]},
              "operator": {"gatewayApi": {"parentNamespace": namespace, "parentName": "gw"}},
              "persistence": {"storageClassName": "standard"}}
    docs = list(yaml.safe_load_all(_template(cluster, namespace, values, tmp_path, chart)))
    if not _served(cluster, "monitoring.coreos.com"):
        # The Prometheus Operator's CRDs are not part of this cluster; the rest must still apply.
        assert any(d and d["kind"] == "ServiceMonitor" for d in docs)
        docs = [d for d in docs if d and d["kind"] != "ServiceMonitor"]
    proc = _dry_run(cluster, yaml.safe_dump_all([d for d in docs if d]))
    assert proc.returncode == 0, proc.stderr
    assert "configmap/ds-deepserve-dashboards created (server dry run)" in proc.stdout


def test_watched_namespace_mode_passes_a_server_side_dry_run(cluster, namespace, crds_installed,
                                                              tmp_path) -> None:
    values = {"replicaCount": 1, "operator": {"watchNamespaces": [namespace], "peering": {"enabled": False}}}
    proc = _dry_run(cluster, _template(cluster, namespace, values, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "rolebinding.rbac.authorization.k8s.io/ds-deepserve-workloads created" in proc.stdout


def test_helm_install_with_invalid_values_fails_with_the_schema_message(cluster, namespace) -> None:
    release = f"bad-{namespace[-5:]}"
    proc = _helm(cluster, "install", release, str(CHART), "--namespace", namespace,
                 "--set", "replicaCount=-1", "--set", "operator.watchNamespaces={Team_A}")
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert "at '/replicaCount': minimum: got -1, want 1" in proc.stderr
    assert "at '/operator/watchNamespaces/0'" in proc.stderr
    # Nothing was half-created.
    assert _helm(cluster, "list", "--namespace", namespace, "-q").stdout.strip() == ""
    got = cluster.run_kubectl("get", "clusterrole", f"{release}-deepserve-cluster", check=False)
    assert got.returncode != 0 and "NotFound" in got.stderr


def _can(cluster: Any, sa: str, *args: str) -> bool:
    proc = cluster.run_kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
    assert proc.stdout.strip() in {"yes", "no"}, proc.stderr
    return proc.stdout.strip() == "yes"


def test_installed_rbac_allows_what_the_operator_needs_and_nothing_more(cluster, namespace) -> None:
    release = f"ds-{namespace[-5:]}"
    proc = _helm(cluster, "install", release, str(CHART), "--namespace", namespace)
    assert proc.returncode == 0, proc.stderr
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-deepserve"
        other = "default"
        needed = [
            ("create", "deployments.apps", "-n", other), ("delete", "services", "-n", other),
            ("patch", "configmaps", "-n", other), ("create", "poddisruptionbudgets.policy", "-n", other),
            ("watch", "inferencemodels.deepserve.io", "-n", other),
            ("patch", "inferencemodels.deepserve.io", "--subresource=status", "-n", other),
            ("update", "inferencemodels.deepserve.io", "--subresource=scale", "-n", other),
            ("list", "pods", "-A"), ("list", "nodes"), ("watch", "gpunodepools.deepserve.io"),
            ("patch", "gpunodepools.deepserve.io", "--subresource=status"),
            ("list", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "events", "-n", other), ("create", "events.events.k8s.io", "-n", other),
            ("patch", "clusterkopfpeerings.kopf.dev/deepserve"),
        ]
        if _served(cluster, "gateway.networking.k8s.io"):  # kubectl resolves names by discovery
            needed.append(("watch", "httproutes.gateway.networking.k8s.io", "-n", other))
        for check in needed:
            assert _can(cluster, sa, *check), f"the operator cannot {' '.join(check)}"
        forbidden = [
            ("get", "secrets", "-n", namespace), ("list", "secrets", "-A"),
            ("get", f"secrets/{release}-deepserve-billing-token", "-n", namespace),
            ("delete", "pods", "-n", other), ("create", "pods", "-n", other), ("patch", "nodes"),
            ("delete", "inferencemodels.deepserve.io", "-n", other),
            ("update", "deployments.apps", "-n", other),
            ("patch", "clusterkopfpeerings.kopf.dev/someone-else"),
            ("create", "clusterroles.rbac.authorization.k8s.io"),
            ("create", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "serviceaccounts/token", "-n", namespace),
            ("*", "*"),
        ]
        for check in forbidden:
            assert not _can(cluster, sa, *check), f"the operator may {' '.join(check)}: not least privilege"
    finally:
        gone = _helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
        assert gone.returncode == 0, gone.stderr
    got = cluster.run_kubectl("get", "clusterrole", f"{release}-deepserve-workloads", check=False)
    assert got.returncode != 0, "uninstall must remove the cluster-scoped RBAC"
