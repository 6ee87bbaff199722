"""The local control plane is a real Kubernetes: RBAC, scheduling onto GPU pools, GC."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.integration


def _wait(fn: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _gpu_deployment(name: str, gpus: int, pool: str) -> client.V1Deployment:
    labels = {"app": name}
    container = client.V1Container(
        name="main", image="registry.local/none:1",
        resources=client.V1ResourceRequirements(
            requests={"cpu": "1", "nvidia.com/gpu": str(gpus)},
            limits={"nvidia.com/gpu": str(gpus)}),
    )
    spec = client.V1PodSpec(
        containers=[container],
        node_selector={"cloud.google.com/gke-nodepool": pool},
        tolerations=[client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=1, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=spec)),
    )


def test_nodes_carry_gpu_labels_capacity_and_taints(cluster: Any) -> None:
    core = client.CoreV1Api(cluster.api_client())
    nodes = core.list_node().items
    products = {n.metadata.labels.get("nvidia.com/gpu.product") for n in nodes}
    assert {"NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"} <= products
    for n in nodes:
        ready = [c for c in n.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", n.metadata.name
        if "nvidia.com/gpu.product" in n.metadata.labels:
            assert int(n.status.allocatable["nvidia.com/gpu"]) == int(n.metadata.labels["nvidia.com/gpu.count"])
            assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in n.spec.taints)
        assert ipaddress.ip_network(n.spec.pod_cidr).subnet_of(ipaddress.ip_network("127.0.0.0/8"))


def test_unprivileged_service_account_is_denied(cluster: Any, namespace: str) -> None:
    api = cluster.api_client()
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="nobody")))
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))).status.token
    cfg = client.Configuration()
    cfg.host = api.configuration.host
    cfg.ssl_ca_cert = api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as sa_api:
        sa_core = client.CoreV1Api(sa_api)
        with pytest.raises(ApiException) as e:
            sa_core.list_namespaced_secret(namespace)
        assert e.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in e.value.body
        # the token itself is valid: self-review works for any authenticated user
        review = client.AuthorizationV1Api(sa_api).create_self_subject_access_review(
            client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb="list", resource="secrets"))))
        assert review.status.allowed is False


def test_gpu_pod_is_scheduled_on_its_pool_and_becomes_ready(cluster: Any, namespace: str) -> None:
    api = cluster.api_client()
    client.AppsV1Api(api).create_namespaced_deployment(namespace, _gpu_deployment("one-l4", 1, "l4"))
    core = client.CoreV1Api(api)

    def ready_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=one-l4").items
        for p in pods:
            conds = {c.type: c.status for c in (p.status.conditions or [])}
            if p.status.phase == "Running" and conds.get("Ready") == "True":
                return p
        return None

    pod = _wait(ready_pod, 60, "the GPU pod to be Running and Ready")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["cloud.google.com/gke-nodepool"] == "l4"
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(node.spec.pod_cidr)


def test_too_many_gpus_stays_pending_with_the_schedulers_reason(cluster: Any, namespace: str) -> None:
    api = cluster.api_client()
    client.AppsV1Api(api).create_namespaced_deployment(namespace, _gpu_deployment("huge", 16, "a100-sxm"))
    core = client.CoreV1Api(api)

    def unschedulable() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=huge").items
        for p in pods:
            for c in p.status.conditions or []:
                if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                    return p, c
        return None

    pod, cond = _wait(unschedulable, 60, "the scheduler to mark the pod Unschedulable")
    assert pod.status.phase == "Pending"
    assert "Insufficient nvidia.com/gpu" in cond.message


def test_garbage_collector_deletes_owned_objects(cluster: Any, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api_client())
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner"), data={"a": "1"}))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                  uid=owner.metadata.uid, block_owner_deletion=True)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owned", owner_references=[ref]), data={"b": "2"}))
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    _wait(gone, 60, "the garbage collector to delete the owned ConfigMap")
