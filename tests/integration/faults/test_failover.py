"""Two operator replicas under Lease-based leader election (--leader-elect): only the holder
acts; SIGKILL it and the standby takes the Lease and reconciles a new model within 15 s."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fault_checks import assert_one_owned_set_per_model, ready
from model_cases import make_model
from ops_helpers import wait_for

from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FAILOVER_GOAL_S = 15.0


def _holder(kube: Kube, namespace: str) -> str:
    lease = kube.get("coordination.k8s.io/v1", "Lease", "deepserve-operator", namespace) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def test_sigkilled_leader_is_replaced_within_15s(kube: Kube, namespace: str, start_operator: Any) -> None:
    flags = ("--leader-elect", f"{namespace}/deepserve-operator", "--lease-duration", "10", "--lease-renew", "3")
    first = start_operator(*flags)
    wait_for(lambda: _holder(kube, namespace), "a first leader", 30, every=0.2)
    second = start_operator(*flags)
    wait_for(lambda: "waiting to lead" in second.log(), "the second replica standing by", 30, every=0.2)
    by_pid = {f"_{op.proc.pid}_": op for op in (first, second)}
    leader = next(op for tag, op in by_pid.items() if tag in _holder(kube, namespace))
    standby = second if leader is first else first
    kube.create(make_model("before", namespace).obj())
    ready(kube, namespace, "before")
    assert ": applied " in leader.log() and ": applied " not in standby.log()  # only the holder writes

    leader.kill()
    killed_at = time.monotonic()
    kube.create(make_model("after", namespace).obj())
    wait_for(lambda: kube.get("apps/v1", "Deployment", "after-main", namespace), "the standby reconciling", 30,
             every=0.1)
    failover_s = time.monotonic() - killed_at
    print(f"failover: SIGKILL of the leader -> new model's Deployment created by the standby in {failover_s:.2f}s")
    assert failover_s <= FAILOVER_GOAL_S
    assert f"_{standby.proc.pid}_" in _holder(kube, namespace)
    ready(kube, namespace, "after")
    assert_one_owned_set_per_model(kube, namespace, ["before", "after"])  # nothing re-created on takeover

    # a clean stop (SIGTERM, a rolling update) releases the Lease: the next standby needs no expiry
    third = start_operator(*flags)
    wait_for(lambda: "waiting to lead" in third.log(), "a new standby", 30, every=0.2)
    standby.stop()
    stopped_at = time.monotonic()
    assert "released by" in standby.log()
    kube.create(make_model("handover", namespace).obj())
    wait_for(lambda: kube.get("apps/v1", "Deployment", "handover-main", namespace), "the next replica", 30,
             every=0.1)
    handover_s = time.monotonic() - stopped_at
    print(f"handover after a clean stop: {handover_s:.2f}s")
    # without the release the Lease would stay the old holder's >= duration - renew (7 s) after it exited
    assert handover_s < 6.0 and f"_{third.proc.pid}_" in _holder(kube, namespace)
