"""The demo waits for the current rollout, never a stale Ready or an old ReplicaSet's pod (#20.6)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from deepserve.operator.dev.demo_flow import CallResult, expected_cost, rollout_state

pytestmark = pytest.mark.unit


def _model(generation: int, observed: int, ready: str = "True", ready_gen: int | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": "Ready", "status": ready, "reason": "AllReplicasReady"}
    if ready_gen is not None:
        cond["observedGeneration"] = ready_gen
    return {"metadata": {"name": "m", "generation": generation},
            "status": {"observedGeneration": observed, "conditions": [cond]}}


def _deployment(revision: str, *, updated: int = 1, ready: int = 1, total: int = 1,
                observed: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": "m-main", "uid": "d1", "generation": 2,
                         "annotations": {"deployment.kubernetes.io/revision": revision}},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "readyReplicas": ready,
                       "availableReplicas": ready, "replicas": total}}


def _rs(revision: str, hash_: str) -> dict[str, Any]:
    return {"metadata": {"ownerReferences": [{"uid": "d1"}], "labels": {"pod-template-hash": hash_},
                         "annotations": {"deployment.kubernetes.io/revision": revision}}}


def _pod(hash_: str, ip: str, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    md: dict[str, Any] = {"labels": {"pod-template-hash": hash_}}
    if deleting:
        md["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    return {"metadata": md, "status": {"podIP": ip, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


RS = [_rs("1", "old"), _rs("2", "new")]


def test_current_rollout_gives_only_the_new_replica_sets_pods() -> None:
    pods = [_pod("old", "10.0.0.1"), _pod("new", "10.0.0.2"), _pod("new", "10.0.0.3", deleting=True)]
    assert rollout_state(_model(3, 3, ready_gen=3), [_deployment("2")], RS, pods) == ("", ["10.0.0.2"])


@pytest.mark.parametrize(("model", "deployment", "why"), [
    (_model(3, 2), _deployment("2"), "status is for generation 2"),  # the previous run's Ready
    (_model(3, 3, ready_gen=2), _deployment("2"), "Ready=True"),  # Ready computed for an old spec
    (_model(3, 3, ready="False"), _deployment("2"), "Ready=False"),
    (_model(3, 3), _deployment("2", observed=1), "not observed"),
    (_model(3, 3), _deployment("2", updated=0, total=2), "rolling out"),  # old pod still serving
])
def test_stale_or_rolling_states_are_not_ready(model: dict[str, Any], deployment: dict[str, Any],
                                              why: str) -> None:
    state, ips = rollout_state(model, [deployment], RS, [_pod("old", "10.0.0.1"), _pod("new", "10.0.0.2")])
    assert why in state and ips == []


def test_no_ready_pod_of_the_current_replica_set() -> None:
    state, ips = rollout_state(_model(1, 1), [_deployment("2")], RS, [_pod("old", "10.0.0.1")])
    assert state == "no Ready pod of the current ReplicaSet" and ips == []


def test_expected_cost_is_exact() -> None:
    calls = [CallResult("a", 10, 24), CallResult("b", 7, 3)]
    # 17 prompt x 150/1M + 27 generated x 600/1M + 2 x 0.0001
    assert expected_cost(calls) == Decimal("0.00255") + Decimal("0.0162") + Decimal("0.0002")
