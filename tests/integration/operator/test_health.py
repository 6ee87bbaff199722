"""Health tells the truth (issue #20.3/4): conditions and Warning Events on the real API server."""

from __future__ import annotations

import time
from typing import Any

import pytest
from model_cases import make_model
from ops_helpers import IM, condition, wait_for

from deepserve.operator.kube import Kube, KubeError

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def warning_events(kube: Kube, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.list("v1", "Event", ns)
            if e.get("type") == "Warning" and e.get("reason") == reason
            and (e.get("involvedObject") or {}).get("name") == name]


def test_unknown_pool_name_is_scheduled_false_naming_it(kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator()
    kube.create(make_model("typo", namespace).set("placement.allowedPools", ["l4-typo"]).obj())

    def unknown() -> dict[str, Any] | None:
        c = condition(kube.get(IM, "InferenceModel", "typo", namespace), "Scheduled")
        return c if c.get("reason") == "UnknownPool" else None

    cond = wait_for(unknown, "Scheduled=False UnknownPool", 60)
    assert cond["status"] == "False"
    assert "spec.placement.allowedPools" in cond["message"] and "l4-typo" in cond["message"]
    events = wait_for(lambda: warning_events(kube, namespace, "typo", "UnknownPool"), "a Warning Event", 30)
    assert "l4-typo" in events[0]["message"]
    assert kube.list("apps/v1", "Deployment", namespace) == []


def ready(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return wait_for(lambda: (o := kube.get(IM, "InferenceModel", name, ns))
                    and condition(o, "Ready").get("status") == "True" and o, f"{name} Ready", 90)


UNKNOWN_BUILTIN = ("deepserve engine: model source 'builtin://tiny-llama3': unknown built-in model; "
                   "known: tiny-llama, tiny-qwen2")


def crash_loop(kube: Kube, pod: dict[str, Any]) -> None:
    """Write the status the kubelet writes for a container that keeps exiting 1."""
    md, st = pod["metadata"], pod["status"]
    conditions = [{**c, "status": "False", "reason": "ContainersNotReady"} if c["type"] in ("Ready", "ContainersReady")
                  else c for c in st.get("conditions", [])]
    container = {"name": "triton", "image": pod["spec"]["containers"][0]["image"], "ready": False, "started": False,
                 "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                          "message": "back-off 1m20s restarting failed container"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": UNKNOWN_BUILTIN,
                                              "startedAt": "2026-01-01T00:00:00Z",
                                              "finishedAt": "2026-01-01T00:00:05Z"}}}
    kube.request("PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                 body={"status": {"conditions": conditions, "containerStatuses": [container]}},
                 content_type="application/merge-patch+json")


def test_crash_looping_pods_are_degraded_within_60s_with_the_reason_and_an_event(
        kube: Kube, namespace: str, start_operator: Any) -> None:
    start_operator()
    kube.create(make_model("crash", namespace).obj())
    ready(kube, namespace, "crash")
    pod = kube.list("v1", "Pod", namespace, label_selector="deepserve.io/model=crash")[0]
    began = time.monotonic()
    crash_loop(kube, pod)

    def degraded() -> dict[str, Any] | None:
        obj = kube.get(IM, "InferenceModel", "crash", namespace)
        return obj if condition(obj, "Degraded").get("reason") == "CrashLoopBackOff" else None

    obj = wait_for(degraded, "Degraded=True CrashLoopBackOff", 60, every=0.1)
    elapsed = time.monotonic() - began
    print(f"crash loop -> Degraded=True in {elapsed:.2f} s")  # the figure in docs/api.md (pytest -s)
    assert elapsed < 60
    assert condition(obj, "Degraded")["status"] == "True"
    assert (condition(obj, "Ready")["status"], condition(obj, "Ready")["reason"]) == ("False", "CrashLoopBackOff")
    message = condition(obj, "Degraded")["message"]
    assert pod["metadata"]["name"] in message and "restarted 4 times" in message and UNKNOWN_BUILTIN in message
    events = wait_for(lambda: warning_events(kube, namespace, "crash", "CrashLoopBackOff"), "a Warning Event", 30)
    assert UNKNOWN_BUILTIN in events[0]["message"]


def refusing_policy(kube: Kube, namespace: str) -> str:
    """A ValidatingAdmissionPolicy that refuses (422 Invalid) the Deployments of model "refused"."""
    name = f"refuse-{namespace}"[:63]
    kube.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name}, "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                            "operations": ["CREATE", "UPDATE"],
                                                            "resources": ["deployments"]}]},
                    "validations": [{"expression": "object.metadata.labels['deepserve.io/model'] != 'refused'",
                                     "message": "deployments of model refused are not allowed here",
                                     "reason": "Invalid"}]}}, field_manager="deepserve-tests")
    kube.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name}, "spec": {
                    "policyName": name, "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": namespace}}}}}, field_manager="deepserve-tests")
    probe = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
        "name": "probe", "namespace": namespace, "labels": {"deepserve.io/model": "refused"}},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}

    def active() -> bool:
        try:
            kube.request("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body=probe,
                         query=[("dryRun", "All")])
        except KubeError as e:
            return e.status == 422
        return False

    wait_for(active, "the admission policy to take effect", 30)
    return name


def test_a_refused_child_is_child_rejected_with_an_event_and_no_traceback_then_recovers(
        kube: Kube, namespace: str, start_operator: Any) -> None:
    policy = refusing_policy(kube, namespace)
    try:
        op = start_operator()
        kube.create(make_model("refused", namespace).obj())

        def rejected() -> dict[str, Any] | None:
            obj = kube.get(IM, "InferenceModel", "refused", namespace)
            return obj if condition(obj, "Degraded").get("reason") == "ChildRejected" else None

        began = time.monotonic()
        obj = wait_for(rejected, "Degraded=True ChildRejected", 60, every=0.1)
        print(f"refused child -> Degraded=True ChildRejected in {time.monotonic() - began:.2f} s after create")
        message = condition(obj, "Degraded")["message"]
        assert "Deployment refused-main" in message and "are not allowed here" in message
        assert condition(obj, "Progressing")["status"] == "False"
        assert condition(obj, "Progressing")["reason"] == "ChildRejected"
        assert condition(obj, "Ready")["status"] == "False"
        wait_for(lambda: warning_events(kube, namespace, "refused", "ChildRejected"), "a Warning Event", 30)
        time.sleep(12)  # a resync and a handler retry in between
        assert "Traceback" not in op.log(), op.log()[-3000:]
        assert len(warning_events(kube, namespace, "refused", "ChildRejected")) == 1
    finally:
        for kind in ("ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicy"):
            kube.delete("admissionregistration.k8s.io/v1", kind, policy)
    ready(kube, namespace, "refused")  # the retries with backoff create it once the policy is gone
    obj = kube.get(IM, "InferenceModel", "refused", namespace)
    assert condition(obj, "Degraded")["status"] == "False"
