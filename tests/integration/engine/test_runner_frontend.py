"""The local runner plays an engine pod's OpenAI frontend next to its Triton (real cluster).

The operator builds the Deployment (Triton + frontend containers); the dev runner starts a
real Triton and the frontend at the pod's IP, as a kubelet would; the real ``openai``
client then talks to ``http://<podIP>:9000`` as the gateway does. Run it under
``flock /tmp/deepserve-e2e.lock`` (it binds simulated pod IPs).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepserve.operator.dev.runner import LocalRunner
from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]
openai = pytest.importorskip("openai")

_HELPERS = Path(__file__).resolve().parents[1] / "operator" / "ops_helpers.py"
if "ops_helpers" not in sys.modules:  # the operator suite's conftest loads it the same way
    _spec = importlib.util.spec_from_file_location("ops_helpers", _HELPERS)
    assert _spec and _spec.loader
    sys.modules["ops_helpers"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["ops_helpers"])
from ops_helpers import IM, OperatorProcess, condition, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
NAME = "front"


@pytest.fixture
def kube(cluster: Any) -> Kube:
    """The Kube seam with deepserve's CRDs applied and established."""
    k = Kube(cluster.api_client())
    paths = sorted((ROOT / "crds").glob("*.yaml"))
    for path in paths:
        k.apply(yaml.safe_load(path.read_text()), field_manager="deepserve-tests")
    wait_for(lambda: all(any(c["type"] == "Established" and c["status"] == "True" for c in (
        (k.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", p.stem) or {}).get("status")
        or {}).get("conditions") or []) for p in paths), "CRDs established", 60)
    return k


@pytest.fixture
def played(cluster: Any, kube: Kube, namespace: str, tmp_path: Path) -> Iterator[LocalRunner]:
    runner = LocalRunner(cluster.kubeconfig, work_dir=tmp_path / "runner").start()
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log",
                         ["--standalone", "--engine-runner", "local"])
    try:
        yield runner
    finally:
        op.stop()
        runner.stop()


def _port_open(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((ip, port)) == 0


def test_runner_serves_openai_at_the_pod_ip(cluster: Any, kube: Kube, namespace: str,
                                            played: LocalRunner) -> None:
    model = {"apiVersion": IM, "kind": "InferenceModel", "metadata": {"name": NAME, "namespace": namespace},
             "spec": {"source": {"uri": "builtin://tiny-llama"}, "scaling": {"replicas": 1}}}
    cluster.run_kubectl("apply", "-f", "-", input=json.dumps(model))

    def ready_ip() -> str | None:
        for pod in kube.list("v1", "Pod", namespace, label_selector=f"deepserve.io/model={NAME}"):
            if condition(pod, "Ready").get("status") == "True" and pod["status"].get("podIP"):
                return str(pod["status"]["podIP"])
        return None

    ip = wait_for(ready_ip, "a Ready engine pod", 180)
    wait_for(lambda: _port_open(ip, 9000), "the frontend at the pod IP", 60)
    client = openai.OpenAI(base_url=f"http://{ip}:9000/v1", api_key="unused", max_retries=0,
                           default_headers={"X-Deepserve-Tenant": "tenant-r"})
    wait_for(lambda: urllib.request.urlopen(f"http://{ip}:9000/health", timeout=5).status == 200,
             "frontend /health", 60)
    out = client.completions.create(model=NAME, prompt="The runner plays", max_tokens=5, temperature=0)
    assert out.usage.completion_tokens == 5 and out.choices[0].finish_reason == "length"
    with urllib.request.urlopen(f"http://{ip}:9000/metrics", timeout=10) as resp:
        assert f'vllm:num_requests_running{{model_name="{NAME}"}}' in resp.read().decode()

    kube.delete(IM, "InferenceModel", NAME, namespace)
    wait_for(lambda: not _port_open(ip, 9000), "the frontend stopped with its pod", 90)
