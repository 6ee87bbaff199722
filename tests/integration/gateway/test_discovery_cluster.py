"""Gateway discovery and scale-from-zero against the real API server (tests/dstest cluster)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from gateway_fakes import KEY_A, FakePod, MemoryKeys, client, serve
from model_cases import make_model

from deepserve.operator.builders.context import LABEL_MODEL, LABEL_VERSION, MANAGED_BY
from deepserve.operator.gateway.discovery import KubeDiscovery
from deepserve.operator.gateway.hold import HoldConfig
from deepserve.operator.gateway.routing import VersionTarget
from deepserve.operator.gateway.server import Gateway, GatewayConfig
from deepserve.operator.kube import Kube
from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan

pytestmark = pytest.mark.integration


def _pod(namespace: str, name: str, version: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, LABEL_MODEL: "chat", LABEL_VERSION: version}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        # never scheduled: the test plays the kubelet and reports it Ready itself
        "spec": {"containers": [{"name": "engine", "image": "engine:test"}],
                 "nodeSelector": {"deepserve.io/test-no-such-node": "x"}},
    }


def _make_ready(kube: Kube, namespace: str, name: str, ip: str) -> None:
    kube.patch_status("v1", "Pod", name, namespace, {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    })


def test_routes_come_from_models_and_ready_pods_and_a_held_request_wakes_the_model(
    gw_kube: Kube, namespace: str
) -> None:
    model = (make_model("chat", namespace).versions(("a", 70), ("b", 30))
             .set("aliases", ["chat-alias"]).replicas(0, min_=0, max_=2)
             .set("scaling.scaleToZero", {"enabled": True}).obj())
    gw_kube.create(model)
    gw_kube.create(_pod(namespace, "chat-a-1", "a"))

    async def body() -> None:
        pod = FakePod("a-1")
        pod_runner, pod_url = await serve(pod.app())
        port = int(pod_url.rsplit(":", 1)[1])
        discovery = KubeDiscovery(gw_kube, [namespace], every_s=0.2, port=port)
        routes = await asyncio.to_thread(discovery.poll_once)
        assert [(r.full_name, r.aliases) for r in routes] == [(f"{namespace}/chat", ("chat-alias",))]
        assert routes[0].versions == (VersionTarget("a", 70), VersionTarget("b", 30))  # no Ready pod yet
        plan = TenantPlan(ModelSelector(namespaces=(namespace,)))
        keys = MemoryKeys({KEY_A: Principal("tenant-a", "aaaaaaaaaaaa", plan)})
        gw = Gateway(keys, [], discovery=discovery, scale_up=discovery.scale_up,
                     config=GatewayConfig(hold=HoldConfig(hold_timeout_s=30, rescale_every_s=0.5)))
        gw_port = await gw.start()
        url = f"http://127.0.0.1:{gw_port}"
        try:
            c = client(url, default_headers={"X-Deepserve-Version": "a"})
            held = asyncio.create_task(c.completions.create(model="chat-alias", prompt="hi"))

            def scaled() -> bool:
                obj = gw_kube.get("deepserve.io/v1alpha1", "InferenceModel", "chat", namespace) or {}
                return obj.get("spec", {}).get("scaling", {}).get("replicas") == 1

            deadline = time.monotonic() + 20
            while not await asyncio.to_thread(scaled):  # the held request asked for a replica
                assert time.monotonic() < deadline and not held.done(), "no scale from zero"
                await asyncio.sleep(0.2)
            assert gw.holder.held == {(namespace, "chat", "a"): 1}
            await asyncio.to_thread(_make_ready, gw_kube, namespace, "chat-a-1", "127.0.0.1")
            resp = await asyncio.wait_for(held, 20)  # discovery saw the Ready pod: request goes on
            assert resp.choices[0].text == "hello world"
            assert pod.seen[0][1]["model"] == "chat"  # the pod serves its model by its bare name
            assert len(gw.holder.cold_starts[(namespace, "chat", "a")]) == 1
        finally:
            await gw.stop()
            await pod_runner.cleanup()

    asyncio.run(asyncio.wait_for(body(), 60))
