"""The front door end to end: keys from the CLI, the openai client through the gateway, exact bills.

Real local cluster, the chart installed (its gateway ServiceAccount is what the gateway runs
as), the operator and billing as in the chart, the local runner playing each engine pod with
a real Triton and the pod's OpenAI frontend. Two tenants call one model; each tenant's FOCUS
rows (``BillingAccountId`` = tenant) must hold exactly its own requests and tokens, priced
exactly. A gateway killed mid-stream still bills that request once; a revoked key is refused
within 5 s.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from dstest.cluster import ClusterHandle

from deepserve.operator.dev.demo_flow import (
    CallResult,
    FrontDoor,
    call_through_gateway,
    expected_cost,
    wait_current_rollout,
)
from deepserve.operator.dev.stack import REPO_ROOT, Stack, helm_install, run_tool
from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MODEL = "tiny-llama"
LOCK = "/tmp/deepserve-e2e.lock"


def _sa(cluster: ClusterHandle, component: str) -> str:
    out = run_tool("kubectl", "get", "sa", "-n", "deepserve-system", "-l",
                   f"app.kubernetes.io/instance=deepserve,app.kubernetes.io/component={component}",
                   "-o", "json", kubeconfig=cluster.kubeconfig).stdout
    return str(json.loads(out)["items"][0]["metadata"]["name"])


@pytest.fixture(scope="module")
def stack(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = Path(tmp_path_factory.mktemp("front-door"))
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        helm_install(cluster.kubeconfig, {"replicaCount": 1, "persistence": {"enabled": False},
                                          "operator": {"peering": {"enabled": False}},
                                          "gateway": {"enabled": True}})
        st = Stack(admin_kubeconfig=cluster.kubeconfig, work_dir=work, service_account=_sa(cluster, "operator"))
        try:
            st.start_billing()
            st.start_operator()
            st.start_runner()
            yield st
        finally:
            st.stop()


def _rows(stack: Stack, tenant: str) -> list[dict[str, str]]:
    text = stack.export("focus")
    return [r for r in csv.DictReader(io.StringIO(text)) if r["BillingAccountId"] == tenant]


def _quantity(rows: list[dict[str, str]], kind: str) -> Decimal:
    return sum((Decimal(r["ConsumedQuantity"]) for r in rows if r["x_UsageKind"] == kind), Decimal(0))


def _wait_rows(stack: Stack, tenant: str, requests: int, timeout: float = 60) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        rows = _rows(stack, tenant)
        if _quantity(rows, "requests") >= requests:
            return rows
        time.sleep(0.5)
    raise AssertionError(f"{tenant}: {_quantity(rows, 'requests')} requests billed, want {requests}")


def test_two_tenants_exact_bills_kill_and_revoke(cluster: ClusterHandle, stack: Stack, namespace: str) -> None:
    kube = Kube(cluster.api_client())
    cluster.run_kubectl("apply", "-f", str(REPO_ROOT / "examples" / "05-gpu-node-pool.yaml"))
    cluster.run_kubectl("apply", "-n", namespace, "-f", str(REPO_ROOT / "examples" / "01-tiny-model.yaml"))
    wait_current_rollout(kube, namespace, MODEL, timeout=240, say=lambda _m: None)
    door = FrontDoor(cluster.kubeconfig, stack.work_dir, stack.billing_url, stack.work_dir / "billing-token",
                     gateway_sa=_sa(cluster, "gateway"))
    door.set_prices(stack.ledger)
    suffix = uuid.uuid4().hex[:5]
    a, b = f"tenant-a-{suffix}", f"tenant-b-{suffix}"
    key_a, key_b = door.create_tenant(kube, a, [namespace]), door.create_tenant(kube, b, [namespace])
    door.start_gateway()
    model = f"{namespace}/{MODEL}"
    try:
        calls: dict[str, list[CallResult]] = {a: [], b: []}
        for i in range(3):
            calls[a].append(call_through_gateway(door.url, key_a, model, f"alpha {i}", stream=i % 2 == 1))
        for i in range(2):
            calls[b].append(call_through_gateway(door.url, key_b, model, f"beta {i} beta", stream=i == 0,
                                                 max_tokens=5))
        for tenant in (a, b):
            rows = _wait_rows(stack, tenant, len(calls[tenant]))
            assert _quantity(rows, "requests") == len(calls[tenant])
            assert _quantity(rows, "prompt_tokens") == sum(c.prompt_tokens for c in calls[tenant])
            assert _quantity(rows, "generated_tokens") == sum(c.completion_tokens for c in calls[tenant])
            assert sum(Decimal(r["BilledCost"]) for r in rows) == expected_cost(calls[tenant])
            assert door.spend(tenant, time.strftime("%Y-%m", time.gmtime()))[0] == expected_cost(calls[tenant])

        # The gateway dies mid-stream: the request is billed once, for what was generated.
        before = _rows(stack, a)
        client = openai.OpenAI(base_url=door.url + "/v1", api_key=key_a, max_retries=0, timeout=60)
        stream = client.completions.create(model=model, prompt="a long answer", max_tokens=200, stream=True)
        seen = 0
        try:
            for chunk in stream:
                seen += len(chunk.choices)
                if seen == 2:
                    assert door.gateway is not None
                    door.gateway.kill()
        except Exception:  # the connection drops with the gateway (openai or httpx error)
            pass
        assert door.gateway is not None and not door.gateway.alive()
        rows = _wait_rows(stack, a, len(calls[a]) + 1)
        time.sleep(2)  # a second (double) event would have arrived by now
        rows = _rows(stack, a)
        assert _quantity(rows, "requests") == len(calls[a]) + 1
        generated = _quantity(rows, "generated_tokens") - _quantity(before, "generated_tokens")
        assert seen <= generated <= 200

        # Restart the gateway; revoke A's key: refused within 5 s, B unaffected.
        door.start_gateway()
        key_id = key_a.split("-")[1]
        door.cli("keys", "--namespace", door.keys_namespace, "revoke", key_id)
        start = time.monotonic()
        while True:
            try:
                openai.OpenAI(base_url=door.url + "/v1", api_key=key_a, max_retries=0).models.list()
            except openai.AuthenticationError:
                break
            assert time.monotonic() - start < 5, "revoked key still accepted after 5 s"
            time.sleep(0.1)
        assert [m.id for m in openai.OpenAI(base_url=door.url + "/v1", api_key=key_b,
                                            max_retries=0).models.list()] == [model]
    finally:
        if door.gateway is not None:
            door.gateway.stop()
        kube.close()
