"""The whole flow, as a user runs it: helm install → kubectl apply → answered requests → a bill.

The chart is installed into the real local cluster; the operator runs out of cluster
authenticated as the chart's ServiceAccount (so the chart's RBAC is what is tested); the
billing endpoint runs as in the chart's billing container; the dev-only local runner plays
each engine pod with a real Triton process at the pod's loopback IP.
"""

from __future__ import annotations

import csv
import io
import json
import queue
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from dstest.cluster import ClusterHandle

from deepserve.operator.dev.stack import REPO_ROOT, Stack, helm_install, run_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "tiny-llama"


def wait_for(fn: Callable[[], Any], timeout: float, what: str, stack: Stack | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        if stack is not None:
            for p in (stack.operator, stack.billing, stack.runner):
                if p is not None and not p.alive():
                    raise AssertionError(f"{p.name} exited:\n{p.tail()}")
        time.sleep(0.5)
    logs = "" if stack is None else "\n".join(
        f"--- {p.name}\n{p.tail(30)}" for p in (stack.operator, stack.runner) if p is not None)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n{logs}")


@pytest.fixture(scope="module")
def stack(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = Path(tmp_path_factory.mktemp("stack"))
    values = {"replicaCount": 1, "persistence": {"enabled": False},
              "operator": {"peering": {"enabled": False}}}
    helm_install(cluster.kubeconfig, values)
    sa = json.loads(run_tool("kubectl", "get", "sa", "-n", "deepserve-system", "-l",
                             "app.kubernetes.io/instance=deepserve", "-o", "json",
                             kubeconfig=cluster.kubeconfig).stdout)["items"][0]["metadata"]["name"]
    st = Stack(admin_kubeconfig=cluster.kubeconfig, work_dir=work, service_account=sa)
    try:
        st.start_billing()
        st.start_operator()
        st.start_runner()
        yield st
    finally:
        st.stop()


def model_status(cluster: ClusterHandle, ns: str) -> dict[str, Any]:
    out = cluster.run_kubectl("get", "inferencemodel", MODEL, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def engine_pods(cluster: ClusterHandle, ns: str) -> list[dict[str, Any]]:
    out = cluster.run_kubectl("get", "pods", "-n", ns, "-l", f"deepserve.io/model={MODEL}", "-o", "json")
    return [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def grpc_generate(ip: str, prompt: str, max_tokens: int, request_id: str) -> tuple[str, int, int]:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(f"{ip}:8001")
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(__import__("numpy").array([prompt.encode()], dtype=object))
    limit = grpcclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(__import__("numpy").array([max_tokens], dtype="int32"))
    try:
        client.async_stream_infer(MODEL, [text, limit], request_id=request_id)
        pieces: list[str] = []
        while True:
            r, e = results.get(timeout=120)
            assert e is None, e
            pieces.append(r.as_numpy("text_output")[0].decode())
            if r.as_numpy("finish_reason")[0]:
                return ("".join(pieces), int(r.as_numpy("prompt_tokens")[0]),
                        int(r.as_numpy("generated_tokens")[0]))
    finally:
        client.stop_stream()
        client.close()


def cancel_after_first_token(ip: str, prompt: str, max_tokens: int, request_id: str) -> int:
    """Start a gRPC stream, cancel it after the first response; return tokens seen."""
    import numpy as np

    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(f"{ip}:8001")
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    limit = grpcclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([max_tokens], dtype="int32"))
    client.async_stream_infer(MODEL, [text, limit], request_id=request_id)
    first, error = results.get(timeout=120)
    assert error is None, error
    client.stop_stream(cancel_requests=True)
    client.close()
    return int(first.as_numpy("generated_tokens")[0])


def http_status(ip: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(f"http://{ip}:8000/v2/models/{MODEL}/generate",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def http_generate(ip: str, prompt: str, max_tokens: int, request_id: str) -> dict[str, Any]:
    body = json.dumps({"text_input": prompt, "max_tokens": max_tokens, "stream": False,
                       "id": request_id}).encode()
    req = urllib.request.Request(f"http://{ip}:8000/v2/models/{MODEL}/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return dict(json.loads(r.read()))


@pytest.fixture
def l4_pool(cluster: ClusterHandle) -> Iterator[None]:
    """The example GPUNodePool (cluster-scoped: removed afterwards, its maxNodes would outlive the test)."""
    pools = str(REPO_ROOT / "examples" / "05-gpu-node-pool.yaml")
    cluster.run_kubectl("apply", "-f", pools)
    try:
        yield
    finally:
        cluster.run_kubectl("delete", "--ignore-not-found", "-f", pools)


def test_apply_serve_update_bill_delete(cluster: ClusterHandle, stack: Stack, namespace: str, l4_pool: None) -> None:
    ns = namespace
    cluster.run_kubectl("apply", "-n", ns, "-f", str(REPO_ROOT / "examples" / "01-tiny-model.yaml"))

    # 1. Ready on the planned pool, through kubectl wait like a user
    wait = cluster.run_kubectl("wait", "--for=condition=Ready", f"inferencemodel/{MODEL}", "-n", ns,
                               "--timeout=240s", check=False, timeout=260)
    assert wait.returncode == 0, (wait.stderr, model_status(cluster, ns), stack.operator.tail() if stack.operator else "")
    status = model_status(cluster, ns)
    pool = status["placement"]["pool"]
    pods = [p for p in engine_pods(cluster, ns) if ready(p)]
    assert pods, "no Ready engine pod"
    for p in pods:
        node = json.loads(cluster.run_kubectl("get", "node", p["spec"]["nodeName"], "-o", "json").stdout)
        labels = node["metadata"]["labels"]
        assert pool in (labels.get("cloud.google.com/gke-nodepool"), labels.get("karpenter.sh/nodepool")), (pool, labels)
    ip = pods[0]["status"]["podIP"]

    # 2. requests over gRPC streaming and HTTP are answered by the real Triton
    sent: list[tuple[str, int, int]] = []
    text, prompt_tokens, generated = grpc_generate(ip, "The operator places", 12, "e2e-grpc-1")
    assert text and generated == 12
    sent.append(("e2e-grpc-1", prompt_tokens, generated))
    out = http_generate(ip, "Billing counts every", 7, "e2e-http-1")
    assert out.get("text_output") and int(out["generated_tokens"]) == 7, out
    sent.append(("e2e-http-1", int(out["prompt_tokens"]), 7))
    cancelled = cancel_after_first_token(ip, "A long answer that the client abandons", 400, "e2e-cancel-1")
    refused = http_status(ip, {"text_input": "", "max_tokens": 5, "stream": False})
    assert refused == 400  # a bad request is refused with a 4xx and nothing is billed
    assert int(http_generate(ip, "Still serving", 3, "e2e-http-2")["generated_tokens"]) == 3

    # 3. an update rolls out: a new pod with the new configuration becomes Ready
    old_uids = {p["metadata"]["uid"] for p in pods}
    cluster.run_kubectl("patch", "inferencemodel", MODEL, "-n", ns, "--type=merge",
                        "-p", json.dumps({"spec": {"engine": {"maxBatchSize": 4}}}))

    def rolled() -> bool:
        cur = engine_pods(cluster, ns)
        return bool(cur) and all(ready(p) and p["metadata"]["uid"] not in old_uids for p in cur)

    wait_for(rolled, 240, "the rollout to replace the engine pods", stack)
    new_ip = engine_pods(cluster, ns)[0]["status"]["podIP"]
    text, prompt_tokens, generated = grpc_generate(new_ip, "After the rollout", 5, "e2e-grpc-2")
    assert generated == 5
    sent.append(("e2e-grpc-2", prompt_tokens, generated))

    # 4. usage reaches the ledger exactly once and shows in the FOCUS export
    def billed() -> Any:
        rows = stack.export("cloudevents")
        mine = {json.loads(line)["data"]["request_id"]: json.loads(line)["data"]
                for line in rows.splitlines() if line.strip()}
        return mine if all(r in mine for r, _, _ in sent) else None

    sent.append(("e2e-http-2", -1, 3))
    events = wait_for(billed, 90, "usage events in the ledger", stack)
    events = wait_for(lambda: (e := billed()) and "e2e-cancel-1" in e and e, 60,
                      "the cancelled request's usage event", stack)
    assert len(events) == len(sent) + 1  # + the cancelled one; the refused one is not billed
    assert events["e2e-cancel-1"]["status"] == "cancelled"
    assert cancelled <= events["e2e-cancel-1"]["generated_tokens"] < 400
    sent[-1] = ("e2e-http-2", events["e2e-http-2"]["prompt_tokens"], 3)
    for rid, p_tokens, g_tokens in sent:
        assert events[rid]["prompt_tokens"] == p_tokens
        assert events[rid]["generated_tokens"] == g_tokens
    focus = list(csv.DictReader(io.StringIO(stack.export("focus"))))
    token_rows = [r for r in focus if r.get("ConsumedUnit", "").lower().startswith("token")]
    cancel = events["e2e-cancel-1"]
    expected_tokens = sum(p + g for _, p, g in sent) + cancel["prompt_tokens"] + cancel["generated_tokens"]
    assert sum(float(r["ConsumedQuantity"]) for r in token_rows) == expected_tokens
    assert stack.export("focus") == stack.export("focus")  # a window's export is reproducible

    # 5. delete → every child is gone
    cluster.run_kubectl("delete", "inferencemodel", MODEL, "-n", ns, "--wait=true", timeout=120)

    def gone() -> bool:
        out = cluster.run_kubectl("get", "deployments,services,configmaps,pods", "-n", ns,
                                  "-l", f"deepserve.io/model={MODEL}", "-o", "name")
        return out.stdout.strip() == ""

    wait_for(gone, 120, "the model's children to be deleted", stack)
