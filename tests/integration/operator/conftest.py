"""Integration fixtures: CRDs installed once, the operator as a real subprocess per test."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str, path: Path) -> None:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])


_load("model_cases", ROOT / "tests" / "unit" / "operator" / "model_cases.py")
_load("ops_helpers", Path(__file__).with_name("ops_helpers.py"))

from ops_helpers import OperatorProcess, wait_for  # noqa: E402

from deepserve.operator.kube import Kube  # noqa: E402


@pytest.fixture(scope="session")
def kube(cluster: Any) -> Iterator[Kube]:
    """The Kube seam on the test cluster, with the CRDs installed and established."""
    k = Kube(cluster.api_client())
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        k.apply(yaml.safe_load(path.read_text()), field_manager="deepserve-tests")

    def established() -> bool:
        for path in (ROOT / "crds").glob("*.yaml"):
            crd = k.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", path.stem)
            conds = {c["type"]: c["status"] for c in ((crd or {}).get("status") or {}).get("conditions") or []}
            if conds.get("Established") != "True":
                return False
        return True

    wait_for(established, "CRDs established", 60)
    yield k


@pytest.fixture
def start_operator(cluster: Any, namespace: str, kube: Kube,
                   tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operator processes watching the test's namespace; all stopped at teardown."""
    started: list[OperatorProcess] = []

    def start(*extra: str) -> OperatorProcess:
        op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / f"operator-{len(started)}.log",
                             list(extra) or ["--standalone"])
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


