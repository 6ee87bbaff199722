"""Fixtures for the chart's unit tests: render charts/deepserve with the pinned helm.

Rendering is local (no cluster, no network). The tests are skipped when helm has not been
built yet (`make tools`); `make test` builds it first.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "deepserve"
NAMESPACE = "deepserve-system"
# helm built with `go install` defaults to Kubernetes v1.20 without its release ldflags;
# render for the version the local control plane runs.
KUBE_VERSION = "1.36.3"

# Every optional feature on (replicaCount 2 keeps peering on; watchNamespaces is tested apart).
ALL_FEATURES: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "deepserve"}},
    "networkPolicy": {"enabled": True, "billingFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "billing"}}}]},
    "podDisruptionBudget": {"enabled": True},
    "persistence": {"enabled": True, "storageClassName": "standard", "size": "5Gi"},
    "operator": {"gatewayApi": {"enabled": True, "parentNamespace": "gw", "parentName": "public"},
                 "extraArgs": ["--resync-seconds=30"]},
    "billing": {"service": {"annotations": {"a": "b"}}},
    "image": {"digest": "sha256:" + "a" * 64},
}


def is_gateway(obj: dict[str, Any]) -> bool:
    """True for the objects of the gateway component (label ``app.kubernetes.io/component``)."""
    return bool((obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "gateway")


class HelmResult:
    """A finished helm command: return code, output, and the parsed documents."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.docs: list[dict[str, Any]] = (
            [d for d in yaml.safe_load_all(proc.stdout) if d] if proc.returncode == 0 else [])

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every rendered object of ``kind``."""
        return [d for d in self.docs if d["kind"] == kind]

    def containers(self) -> dict[str, dict[str, Any]]:
        """The operator Deployment's containers by name."""
        spec = self.one("Deployment")["spec"]["template"]["spec"]
        return {c["name"]: c for c in spec["containers"]}

    def one(self, kind: str) -> dict[str, Any]:
        """The only rendered object of ``kind`` that is not the gateway's (the gateway ships by
        default with a Deployment, Service, PDB and RBAC of its own: test_chart_gateway.py)."""
        found = [d for d in self.of_kind(kind) if not is_gateway(d)]
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """Path of the pinned helm binary (skip when it is not built yet)."""
    from deepserve.operator.dev import toolchain

    try:
        return toolchain.resolve().path("helm")
    except toolchain.ToolchainError as err:
        found = shutil.which("helm")
        if found:
            return found
        pytest.skip(f"helm not available: {err}")


@pytest.fixture
def chart_copy(tmp_path: Path) -> Callable[..., Path]:
    """``chart_copy(dashboard=False)`` copies the chart into tmp_path (for tests that edit it).

    With ``dashboard`` the copy has at least one dashboards/*.json (the metering part ships
    the real ones; until then a minimal one stands in).
    """
    def copy(dashboard: bool = False) -> Path:
        dst = tmp_path / "deepserve"
        shutil.copytree(CHART, dst)
        dash = dst / "dashboards"
        dash.mkdir(exist_ok=True)
        if dashboard and not list(dash.glob("*.json")):
            (dash / "test.json").write_text('{"title": "test", "panels": []}\n')
        return dst
    return copy


@pytest.fixture
def all_features() -> dict[str, Any]:
    """Values with every optional feature on."""
    return copy.deepcopy(ALL_FEATURES)


@pytest.fixture
def render(helm_bin: str, tmp_path: Path) -> Callable[..., HelmResult]:
    """``render(values=None, chart=CHART, release="ds")`` runs ``helm template``."""
    def _render(values: dict[str, Any] | None = None, *, chart: Path = CHART,
                release: str = "ds", extra: tuple[str, ...] = ()) -> HelmResult:
        vfile = tmp_path / f"values-{release}.yaml"
        vfile.write_text(yaml.safe_dump(values or {}))
        proc = subprocess.run(
            [helm_bin, "template", release, str(chart), "--namespace", NAMESPACE, "-f", str(vfile),
             "--kube-version", KUBE_VERSION, *extra],
            capture_output=True, text=True, timeout=60, check=False)
        return HelmResult(proc)
    return _render


@pytest.fixture
def lint(helm_bin: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``lint(values=None, chart=CHART)`` runs ``helm lint --strict``."""
    def _lint(values: dict[str, Any] | None = None, *, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
        vfile = tmp_path / "lint-values.yaml"
        vfile.write_text(yaml.safe_dump(values or {}))
        return subprocess.run([helm_bin, "lint", "--strict", str(chart), "-f", str(vfile),
                               "--kube-version", KUBE_VERSION],
                              capture_output=True, text=True, timeout=60, check=False)
    return _lint
