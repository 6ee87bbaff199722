"""The API server, etcd, or both crash mid-reconcile, and a watch expires (410 Gone) while the operator is
away: the real operator converges every model, creating no child twice and orphaning none."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from fault_checks import assert_one_owned_set_per_model, children, must_get, ready, uids
from model_cases import make_model
from ops_helpers import IM, wait_for

from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("crashed", [("kube-apiserver",), ("etcd",), ("etcd", "kube-apiserver")],
                         ids=["apiserver", "etcd", "etcd-and-apiserver"])
def test_control_plane_crash_mid_reconcile_converges_without_duplicates(
        kube: Kube, namespace: str, start_operator: Any, faults: Any, crashed: tuple[str, ...]) -> None:
    op = start_operator()
    names = [f"a{i}" for i in range(8)]
    for n in names:
        kube.create(make_model(n, namespace).obj())
    # crash while the operator is part-way: some models have children, others not yet
    wait_for(lambda: kube.list("apps/v1", "Deployment", namespace), "the first Deployment", 60, every=0.05)
    before = uids(children(kube, namespace))
    for component in crashed:
        faults.kill(component)
    time.sleep(3)  # the operator's watches and writes fail (or hang, with etcd away) meanwhile
    for component in crashed:  # etcd first
        faults.start(component)
    if crashed == ("etcd",):
        wait_for(faults.local.healthy, "the API server healthy with etcd back", 60)
    try:
        for n in names:
            ready(kube, namespace, n)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- operator log (tail) ---\n{op.log()[-6000:]}") from None
    assert op.proc.poll() is None, "the operator exited instead of reconnecting"
    after = uids(children(kube, namespace))
    assert {k: after.get(k) for k in before} == before  # nothing seen before the crash was re-created
    assert_one_owned_set_per_model(kube, namespace, names)
    assert len(kube.list("v1", "Pod", namespace)) == len(names)


def _watch_first_event(faults: Any, path: str, resource_version: str) -> dict[str, Any]:
    """The first event of a raw watch from ``resource_version`` (what a reconnecting client gets)."""
    local = faults.local
    url = f"{local.server}{path}?watch=1&resourceVersion={resource_version}&timeoutSeconds=5"
    ctx: ssl.SSLContext = local._ssl()

    def first() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
                return dict(json.loads(r.readline()))
        except urllib.error.HTTPError as e:
            if e.code == 429:  # the new server's watch cache is still filling
                return None
            raise

    return dict(wait_for(first, "a watch answer from the restarted API server", 30, every=0.2))


def test_watch_expired_410_gone_relists_and_converges(
        kube: Kube, namespace: str, start_operator: Any, faults: Any) -> None:
    op = start_operator()
    kube.create(make_model("w1", namespace).obj())
    ready(kube, namespace, "w1")
    path = f"/apis/{IM}/namespaces/{namespace}/inferencemodels"
    seen_rv = kube.request("GET", path)["metadata"]["resourceVersion"]
    os.kill(op.proc.pid, signal.SIGSTOP)  # a long pause / partition: no watch event reaches it
    try:
        kube.create(make_model("w2", namespace).obj())  # it never sees this ADDED event
        w1 = must_get(kube, IM, "InferenceModel", "w1", namespace)
        w1["spec"]["scaling"] = {"minReplicas": 2, "maxReplicas": 2}
        kube.request("PUT", f"{path}/w1", body=w1)  # nor this MODIFIED one
        faults.etcd_compact()  # history before now is gone from etcd...
        faults.kill("kube-apiserver")
        faults.start("kube-apiserver")  # ...and from the new API server's watch cache
        # ground truth: resuming the old watch is refused with 410 Gone, so only a relist helps
        event = _watch_first_event(faults, path, seen_rv)
        assert event["type"] == "ERROR" and event["object"]["code"] == 410, event
    finally:
        os.kill(op.proc.pid, signal.SIGCONT)
    ready(kube, namespace, "w2")

    def w1_relisted() -> bool:
        """The operator acted on the update it never saw as an event: status observed
        generation 2 and the Deployment asks for 2 replicas. (Both pods turning Ready also
        needs kube-controller-manager, whose own informers recover from the compaction on
        their own schedule — not what this test is about.)"""
        obj = must_get(kube, IM, "InferenceModel", "w1", namespace)
        dep = must_get(kube, "apps/v1", "Deployment", "w1-main", namespace)
        return ((obj.get("status") or {}).get("observedGeneration") == 2
                and dep["spec"]["replicas"] == 2)

    wait_for(w1_relisted, "w1's update reconciled after the relist", 120)
    assert_one_owned_set_per_model(kube, namespace, ["w1", "w2"])
    assert op.proc.poll() is None
