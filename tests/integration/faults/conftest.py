"""Fault-suite fixtures: a control plane of its own (its API server and etcd get restarted),
the CRDs, and real operator processes watching the test's namespace."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dstest.cluster import ClusterHandle
from dstest.crds import kube_with_crds

from deepserve.operator.dev import toolchain
from deepserve.operator.dev.cluster import LocalCluster, Ports
from deepserve.operator.dev.pki import create_pki
from deepserve.operator.kube import Kube

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str, path: Path) -> None:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])


_load("model_cases", ROOT / "tests" / "unit" / "operator" / "model_cases.py")
_load("ops_helpers", ROOT / "tests" / "integration" / "operator" / "ops_helpers.py")
_load("fault_checks", Path(__file__).with_name("fault_checks.py"))

from ops_helpers import OperatorProcess, wait_for  # noqa: E402


class FaultyCluster:
    """Crash and restart components of a LocalCluster (same flags, data and ports)."""

    def __init__(self, local: LocalCluster) -> None:
        self.local = local

    def _pids(self) -> dict[str, int]:
        return dict(json.loads(self.local._state_file.read_text())["pids"])

    def kill(self, component: str) -> None:
        """SIGKILL a component's process group, like a crashed control-plane pod."""
        pid = self._pids()[component]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def start(self, component: str) -> None:
        """Start a killed component again and wait until it serves."""
        tc = toolchain.resolve()
        pki = create_pki(self.local.state_dir / "pki")  # reuses the existing keys
        args = {"etcd": lambda: self.local._etcd_args(tc),
                "kube-apiserver": lambda: self.local._apiserver_args(tc, pki)}[component]()
        pids = self._pids()
        pids[component] = self.local._spawn(component, args)
        self.local._save(pids)
        if component == "etcd":
            wait_for(lambda: self.local._http_ok(f"http://127.0.0.1:{self.local.ports.etcd_client}/health"),
                     "etcd healthy again", 60, every=0.2)
        else:
            wait_for(self.local.healthy, "kube-apiserver /readyz again", 90, every=0.2)

    def etcd_compact(self) -> int:
        """Compact etcd's history up to its current revision (through its v3 JSON gateway)."""
        base = f"http://127.0.0.1:{self.local.ports.etcd_client}/v3/kv"

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            req = urllib.request.Request(f"{base}/{path}", data=json.dumps(body).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                return dict(json.loads(r.read()))

        revision = int(post("range", {"key": "AA=="})["header"]["revision"])  # key "\0": header only
        post("compaction", {"revision": revision, "physical": True})
        return revision


@pytest.fixture(scope="session")
def fault_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The fault suite's own control plane: other suites never see its restarts."""
    local = LocalCluster(state_dir=Path(tmp_path_factory.mktemp("fault-cluster")), ports=Ports.free())
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def cluster(fault_local: LocalCluster) -> Iterator[ClusterHandle]:
    """Overrides the session cluster for this directory (the ``namespace`` fixture uses it)."""
    handle = ClusterHandle(kubeconfig=str(fault_local.kubeconfig), local=fault_local)
    yield handle
    handle.close()


@pytest.fixture(scope="session")
def faults(fault_local: LocalCluster) -> FaultyCluster:
    return FaultyCluster(fault_local)


@pytest.fixture(scope="session")
def kube(cluster: ClusterHandle) -> Iterator[Kube]:
    """The Kube seam on the fault cluster, with the CRDs installed and established."""
    yield kube_with_crds(cluster)


@pytest.fixture
def start_operator(cluster: ClusterHandle, namespace: str, kube: Kube,
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


