"""The session's Kubernetes cluster: the real local control plane, or one given by kubeconfig."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepserve.operator.dev import toolchain
from deepserve.operator.dev.cluster import LocalCluster, Ports


@dataclass
class ClusterHandle:
    """What tests get: a kubeconfig, API clients and kubectl."""

    kubeconfig: str
    local: LocalCluster | None = None
    _clients: list[Any] = field(default_factory=list)

    @property
    def kubectl(self) -> str:
        """Path of the pinned kubectl."""
        return toolchain.resolve().path("kubectl")

    @property
    def helm(self) -> str:
        return toolchain.resolve().path("helm")

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient for the admin identity."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg)
        api = client.ApiClient(cfg)
        self._clients.append(api)
        return api

    def run_kubectl(self, *args: str, check: bool = True, input: str | None = None,
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster and return the completed process."""
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        return subprocess.run([self.kubectl, *args], env=env, capture_output=True, text=True,
                              check=check, input=input, timeout=timeout)

    def close(self) -> None:
        for c in self._clients:
            c.close()


def start_session_cluster(state_dir: Path) -> ClusterHandle:
    """Reuse DEEPSERVE_KUBECONFIG's cluster, or start a fresh local one in state_dir."""
    given = os.environ.get("DEEPSERVE_KUBECONFIG")
    if given:
        return ClusterHandle(kubeconfig=given)
    local = LocalCluster(state_dir=state_dir, ports=Ports.free())
    local.start()
    return ClusterHandle(kubeconfig=str(local.kubeconfig), local=local)
