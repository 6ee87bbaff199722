"""Apply -> children, scheduled on the planned pool, Ready; update -> rollout; delete -> gone."""

from __future__ import annotations

from typing import Any

import pytest
from model_cases import make_model
from ops_helpers import IM, condition, wait_for

from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KINDS = [("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget")]


def children(kube: Kube, ns: str, model: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for api_version, kind in KINDS:
        for obj in kube.list(api_version, kind, ns, label_selector=f"deepserve.io/model={model}"):
            out[(kind, obj["metadata"]["name"])] = obj
    return out


def ready_model(kube: Kube, ns: str, name: str, generation: int = 1) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        obj = kube.get(IM, "InferenceModel", name, ns)
        st = seen["status"] = (obj or {}).get("status") or {}
        ok = st.get("observedGeneration") == generation and condition(obj, "Ready").get("status") == "True"
        return obj if ok else None

    try:
        return wait_for(check, f"{name} Ready at generation {generation}", 150)
    except pytest.fail.Exception:
        pods = [(p["metadata"]["name"], p["spec"].get("nodeSelector"), p["spec"].get("nodeName"),
                 [(c["type"], c["status"], c.get("message", "")) for c in p["status"].get("conditions", [])])
                for p in kube.list("v1", "Pod", ns)]
        pytest.fail(f"{name} not Ready at generation {generation}; status {seen.get('status')}; pods {pods}")


def test_apply_creates_children_on_the_planned_pool_and_kubectl_wait_works(
        cluster: Any, kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator()
    model = make_model("llama", namespace).replicas(2, max_=4).set("placement.allowedPools", ["l4"]).obj()
    cluster.run_kubectl("apply", "-f", "-", input=__import__("json").dumps(model))
    done = cluster.run_kubectl("wait", "--for=condition=Ready", "inferencemodel/llama", "-n", namespace,
                               "--timeout=90s", check=False)
    assert done.returncode == 0, done.stderr
    obj = ready_model(kube, namespace, "llama")
    st = obj["status"]
    assert st["placement"]["pool"] == "l4" and st["readyReplicas"] == 2 == st["replicas"]
    assert set(children(kube, namespace, "llama")) == {
        ("ConfigMap", "llama-main-repo"), ("Deployment", "llama-main"), ("Service", "llama-main"),
        ("Service", "llama"), ("PodDisruptionBudget", "llama-main")}
    pods = kube.list("v1", "Pod", namespace, label_selector="deepserve.io/model=llama")
    assert len(pods) == 2
    for pod in pods:
        node = kube.get("v1", "Node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"
        assert condition(pod, "Ready")["status"] == "True"
    printed = cluster.run_kubectl("get", "im", "-n", namespace).stdout
    assert "l4" in printed and "nvidia-l4" in printed and "True" in printed


def test_update_rolls_the_deployment_and_scale_subresource_drives_replicas(
        cluster: Any, kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator()
    kube.create(make_model("m", namespace).replicas(1, max_=3).obj())
    ready_model(kube, namespace, "m")
    dep = kube.get("apps/v1", "Deployment", "m-main", namespace)
    old_hash = dep["spec"]["template"]["metadata"]["annotations"]["deepserve.io/config-hash"]
    obj = kube.get(IM, "InferenceModel", "m", namespace)
    obj["spec"]["engine"]["maxNewTokens"] = 64
    kube.request("PUT", f"/apis/{IM}/namespaces/{namespace}/inferencemodels/m", body=obj)
    ready_model(kube, namespace, "m", generation=2)

    def rolled() -> bool:
        d = kube.get("apps/v1", "Deployment", "m-main", namespace)
        new = d["spec"]["template"]["metadata"]["annotations"]["deepserve.io/config-hash"]
        return new != old_hash and d["status"].get("updatedReplicas") == 1 == d["status"].get("readyReplicas")

    wait_for(rolled, "rollout to the new template")
    cm = kube.get("v1", "ConfigMap", "m-main-repo", namespace)
    assert '\\"max_new_tokens_limit\\": 64' in cm["data"]["config.pbtxt"]
    cluster.run_kubectl("scale", "inferencemodel/m", "-n", namespace, "--replicas=3")
    wait_for(lambda: kube.get("apps/v1", "Deployment", "m-main", namespace)["spec"]["replicas"] == 3,
             "Deployment scaled through the InferenceModel scale subresource")
    wait_for(lambda: kube.get(IM, "InferenceModel", "m", namespace)["status"].get("readyReplicas") == 3,
             "3 ready replicas in status", 60)


def test_delete_removes_everything(kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator()
    kube.create(make_model("gone", namespace).versions(("a", 50), ("b", 50)).obj())
    ready_model(kube, namespace, "gone")
    assert len(children(kube, namespace, "gone")) == 9
    kube.delete(IM, "InferenceModel", "gone", namespace)
    wait_for(lambda: not children(kube, namespace, "gone")
             and not kube.list("v1", "Pod", namespace, label_selector="deepserve.io/model=gone"),
             "garbage collection of every child and pod", 90)


def test_hand_edits_and_deletes_are_reverted(kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator()
    kube.create(make_model("drift", namespace).obj())
    ready_model(kube, namespace, "drift")
    kube.delete("v1", "Service", "drift", namespace)
    kube.request("PATCH", f"/apis/apps/v1/namespaces/{namespace}/deployments/drift-main",
                 body={"spec": {"replicas": 4}}, content_type="application/merge-patch+json")
    kube.request("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/drift-main-repo",
                 body={"data": {"config.pbtxt": "hacked"}}, content_type="application/merge-patch+json")
    wait_for(lambda: kube.get("v1", "Service", "drift", namespace), "deleted Service recreated")
    wait_for(lambda: kube.get("apps/v1", "Deployment", "drift-main", namespace)["spec"]["replicas"] == 1,
             "Deployment replicas restored")
    wait_for(lambda: kube.get("v1", "ConfigMap", "drift-main-repo", namespace)["data"]["config.pbtxt"] != "hacked",
             "ConfigMap restored")
    events = kube.list("v1", "Event", namespace)
    assert any(e.get("reason") == "DriftCorrected" for e in events)


def test_operator_killed_mid_way_converges_without_duplicates(
        kube: Kube, namespace: str, start_operator: Any) -> None:
    first = start_operator()
    names = [f"r{i}" for i in range(6)]
    for n in names:
        kube.create(make_model(n, namespace).obj())
    wait_for(lambda: kube.list("apps/v1", "Deployment", namespace), "the first Deployments", 60, every=0.1)
    first.kill()
    start_operator()
    for n in names:
        ready_model(kube, namespace, n)
    deployments = kube.list("apps/v1", "Deployment", namespace)
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(f"{n}-main" for n in names)
    replica_sets = kube.list("apps/v1", "ReplicaSet", namespace)
    assert len(replica_sets) == len(names)  # no template churn across the restart
    pods = kube.list("v1", "Pod", namespace)
    assert len(pods) == len(names)
    for obj in [*kube.list("v1", "Service", namespace), *kube.list("v1", "ConfigMap", namespace)]:
        labels = obj["metadata"].get("labels") or {}
        if "deepserve.io/model" in labels:
            assert obj["metadata"]["ownerReferences"][0]["name"] in names


def test_no_pool_fits_is_reported_not_retried_in_a_loop(kube: Kube, namespace: str, start_operator: Any) -> None:
    op = start_operator()
    huge = make_model("huge", namespace).source("hf://org/huge").set("source.shape", {
        "totalParams": 2_000_000_000_000, "layers": 160, "hiddenSize": 16384, "heads": 128, "vocabSize": 128000})
    huge.set("resources.maxTensorParallel", 2)
    kube.create(huge.obj())

    def scheduled_false() -> dict[str, Any] | None:
        c = condition(kube.get(IM, "InferenceModel", "huge", namespace), "Scheduled")
        return c if c.get("status") == "False" else None

    cond = wait_for(scheduled_false, "Scheduled=False")
    assert cond["reason"] and cond["message"]
    assert kube.list("apps/v1", "Deployment", namespace) == []
    time = __import__("time")

    def settled() -> str | None:
        # the status patch and kopf's own annotation patch after the handler are two writes;
        # a retry loop would never leave a quiet second
        rv = kube.get(IM, "InferenceModel", "huge", namespace)["metadata"]["resourceVersion"]
        time.sleep(1)
        return rv if kube.get(IM, "InferenceModel", "huge", namespace)["metadata"]["resourceVersion"] == rv else None

    rv = wait_for(settled, "the model's writes to settle", 20)
    time.sleep(3)
    assert kube.get(IM, "InferenceModel", "huge", namespace)["metadata"]["resourceVersion"] == rv
    assert op.proc.poll() is None
