"""The operator's autoscaler on a real cluster with real Triton pods: 0 -> 1 on demand, back to 0 when idle.

The operator runs as `deepserve operator run --engine-runner local`; the dev-only local
runner plays each engine pod with a real Triton process at the pod's loopback IP. Load is
real requests to Triton's `/v2/models/<name>/generate`; the wake-up is the activator's own
scale-from-zero call.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deepserve.operator.autoscaler.io import scale_from_zero
from deepserve.operator.dev.runner import LocalRunner
from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(240)]

_HELPERS = Path(__file__).resolve().parents[1] / "operator" / "ops_helpers.py"
if "ops_helpers" not in sys.modules:  # the operator suite's conftest loads it the same way
    _spec = importlib.util.spec_from_file_location("ops_helpers", _HELPERS)
    assert _spec and _spec.loader
    sys.modules["ops_helpers"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["ops_helpers"])
from ops_helpers import IM, OperatorProcess, condition, wait_for  # noqa: E402

NAME = "chat"
IDLE_S = 30  # the schema's minimum idleSeconds


@pytest.fixture
def operator(cluster: Any, scale_kube: Kube, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator (autoscaler ticking every second) and the local runner for its engine pods."""
    runner = LocalRunner(cluster.kubeconfig, work_dir=tmp_path / "runner").start()
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log",
                         ["--standalone", "--engine-runner", "local", "--autoscale-tick", "1"])
    try:
        yield op
    finally:
        op.stop()
        runner.stop()


def _waiter(op: OperatorProcess) -> Callable[..., Any]:
    def wait(check: Callable[[], Any], what: str, timeout: float) -> Any:
        try:
            return wait_for(check, what, timeout)
        except pytest.fail.Exception:
            pytest.fail(f"timed out waiting for {what}; operator log tail:\n{op.log()[-3000:]}")

    return wait


def _scaling(kube: Kube, ns: str) -> dict[str, Any]:
    return ((kube.get(IM, "InferenceModel", NAME, ns) or {}).get("status") or {}).get("scaling") or {}


def _ready_pods(kube: Kube, ns: str) -> list[dict[str, Any]]:
    pods = kube.list("v1", "Pod", ns, label_selector=f"deepserve.io/model={NAME}")
    return [p for p in pods if condition(p, "Ready").get("status") == "True" and p["status"].get("podIP")]


def _generate(ip: str, i: int) -> dict[str, Any]:
    body = json.dumps({"text_input": f"request {i} asks", "max_tokens": 3, "stream": False}).encode()
    req = urllib.request.Request(f"http://{ip}:8000/v2/models/{NAME}/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def test_scales_from_zero_on_demand_serves_load_and_returns_to_zero_when_idle(
        cluster: Any, scale_kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube, ns, wait = scale_kube, namespace, _waiter(operator)
    model = {"apiVersion": IM, "kind": "InferenceModel", "metadata": {"name": NAME, "namespace": ns},
             "spec": {"source": {"uri": "builtin://tiny-llama"},
                      "scaling": {"minReplicas": 0, "maxReplicas": 2, "target": {"value": 4},
                                  "scaleToZero": {"enabled": True, "idleSeconds": IDLE_S}}}}
    cluster.run_kubectl("apply", "-f", "-", input=json.dumps(model))

    # 1. at rest: scaled to zero, Ready, and the autoscaler reports that it owns the count
    idle = wait(lambda: (s := _scaling(kube, ns)).get("owner") == "deepserve" and s, "status.scaling.owner", 60)
    assert idle["desiredReplicas"] == 0 and idle["metric"] == "inflightRequests" and idle["target"] == 4
    assert "deepserve autoscaler" in idle["ownerReason"]
    wait(lambda: condition(kube.get(IM, "InferenceModel", NAME, ns), "Ready").get("reason") == "ScaledToZero",
         "Ready=ScaledToZero", 30)
    assert not kube.list("v1", "Pod", ns, label_selector=f"deepserve.io/model={NAME}")

    # 2. a request arrives: the activator's scale-from-zero, and a real Triton pod becomes Ready
    woke = time.monotonic()
    assert scale_from_zero(kube, ns, NAME) is True
    ip = wait(lambda: (pods := _ready_pods(kube, ns)) and pods[0]["status"]["podIP"], "a Ready engine pod", 120)
    cold_start = time.monotonic() - woke

    # 3. steady requests past the idle period keep it up: load is read from Triton's counters
    answered, i = 0, 0
    while time.monotonic() - woke < IDLE_S + 8 or answered < 10:
        out = _generate(ip, i)
        assert out.get("text_output") and int(out["generated_tokens"]) == 3, out
        answered, i = answered + 1, i + 1
        time.sleep(0.3)
    last_request = time.monotonic()
    obj = kube.get(IM, "InferenceModel", NAME, ns) or {}
    assert obj["spec"]["scaling"]["replicas"] == 1, ("scaled while serving", obj.get("status", {}).get("scaling"))
    assert _ready_pods(kube, ns), "the pod went away while serving"

    # 4. no more requests: back to zero after idleSeconds, written by the autoscaler through /scale
    wait(lambda: (kube.get(IM, "InferenceModel", NAME, ns) or {})["spec"]["scaling"]["replicas"] == 0,
         "scale to zero after idle", IDLE_S + 30)
    to_zero = time.monotonic() - last_request
    assert to_zero >= IDLE_S - 3, f"scaled to zero {to_zero:.1f}s after the last request (idleSeconds {IDLE_S})"
    scaling = wait(lambda: (s := _scaling(kube, ns)).get("mode") == "idle" and s, "status.scaling mode idle", 30)
    assert scaling["owner"] == "deepserve" and scaling["desiredReplicas"] == 0 == scaling["lastScaleReplicas"]
    assert scaling["lastScaleTime"]
    wait(lambda: not kube.list("v1", "Pod", ns, label_selector=f"deepserve.io/model={NAME}"), "pods gone", 60)
    print(f"cold start {cold_start:.1f}s, {answered} requests answered, zero {to_zero:.1f}s after the last one")
