"""GPU time = GPUs held by Ready pods × seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deepserve.operator.metering import PodSnapshot, gpu_intervals
from deepserve.operator.metering.gputime import split_by_hour

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)  # as in conftest.build_event


def snap(minute: float, ready: bool, changed_minute: float | None, gpus: int = 4,
         uid: str = "u1") -> PodSnapshot:
    changed = None if changed_minute is None else T0 + timedelta(minutes=changed_minute)
    return PodSnapshot(uid, "pod", "prod", "chat", "v1", "acme", "h100", gpus,
                       T0 + timedelta(minutes=minute), ready, changed)


def seconds(snaps, previous=None) -> float:
    return sum(i.gpu_seconds for i in gpu_intervals(snaps, previous))


def test_continuously_ready_pod_is_billed_for_the_gap_exactly() -> None:
    # ready since minute -5, observed at 0 and again 60 minutes later (operator was down)
    assert seconds([snap(0, True, -5), snap(60, True, -5)]) == 4 * 65 * 60


def test_transitions_use_the_ready_condition_time() -> None:
    assert seconds([snap(0, False, None), snap(10, True, 4)]) == 4 * 6 * 60   # became ready
    assert seconds([snap(0, True, -1), snap(10, False, 7)]) == 4 * (1 + 7) * 60  # went unready
    assert seconds([snap(0, True, -1), snap(10, True, 8)]) == 4 * (1 + 2) * 60   # flapped
    assert seconds([snap(0, False, None), snap(10, False, 3)]) == 0
    assert seconds([snap(0, True, -1, gpus=0), snap(10, True, -1, gpus=0)]) == 0


def test_order_duplicates_and_previous_state() -> None:
    snaps = [snap(20, True, 0), snap(10, True, 0), snap(10, True, 0)]
    assert seconds(snaps) == 4 * 20 * 60
    assert seconds([snap(20, True, 0)], {"u1": snap(10, True, 0)}) == 4 * 10 * 60
    assert seconds([snap(5, True, 0)], {"u1": snap(10, True, 0)}) == 0  # stale snapshot
    ids = {i.interval_id for i in gpu_intervals(snaps)}
    assert ids == {i.interval_id for i in gpu_intervals(list(reversed(snaps)))}


def test_from_pod_reads_labels_gpus_and_ready_condition() -> None:
    pod = {"metadata": {"uid": "abc", "name": "chat-v1-0", "namespace": "prod",
                        "labels": {"deepserve.io/model": "chat", "deepserve.io/version": "v1"}},
           "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}},
                                   {"resources": {}}]},
           "status": {"conditions": [{"type": "Ready", "status": "True",
                                      "lastTransitionTime": "2026-11-01T09:00:00Z"}]}}
    s = PodSnapshot.from_pod(pod, T0, account="acme", pool="h100")
    assert s is not None and (s.gpus, s.ready, s.account, s.pool) == (2, True, "acme", "h100")
    assert s.ready_changed_at == T0 - timedelta(hours=1)
    assert PodSnapshot.from_json_dict(s.to_json_dict()) == s
    assert PodSnapshot.from_pod({"metadata": {"labels": {}}}, T0) is None


def test_split_by_hour() -> None:
    parts = split_by_hour(T0 - timedelta(minutes=15), T0 + timedelta(minutes=70))
    assert [(h.hour, s) for h, s in parts] == [(9, 900.0), (10, 3600.0), (11, 600.0)]


def test_ledger_accounts_gpu_time_once_across_calls(ledger) -> None:
    ledger.observe_pods([snap(0, True, -30)])
    ledger.observe_pods([snap(30, True, -30)])
    ledger.observe_pods([snap(30, True, -30)])  # replayed observation
    ledger.observe_pods([snap(90, False, 80)], deleted=["u1"])
    rows = ledger.gpu_rows(T0 - timedelta(hours=1), T0 + timedelta(hours=2))
    assert [(r.start.hour, r.gpu_seconds) for r in rows] == [(9, 4 * 1800.0), (10, 4 * 3600.0),
                                                            (11, 4 * 1200.0)]
    part = ledger.gpu_rows(T0 + timedelta(minutes=15), T0 + timedelta(minutes=75))
    assert sum(r.gpu_seconds for r in part) == 4 * 3600.0
    assert ledger._read("SELECT COUNT(*) FROM pod_state")[0][0] == 0
