"""LeaderElector over an in-memory Lease store that enforces resourceVersion preconditions
(the API server's optimistic concurrency): takeover only after the record stops changing,
one winner of a race, give-up after the renew deadline, release hands over at once."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import pytest

from deepserve.operator.kube import KubeError
from deepserve.operator.leases import LeaderElector, LeaseConfig

pytestmark = pytest.mark.unit
PATH = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/lead"


class LeaseStore:
    """GET/POST/PUT of one Lease; PUT with a stale resourceVersion is 409 Conflict."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.after_get: Callable[[], None] | None = None
        self.down = False

    def request(self, method: str, path: str, *, body: Any = None, timeout: float = 30, **_: Any) -> dict[str, Any]:
        if self.down:
            raise KubeError(0, "unreachable", "connection refused")
        if method == "GET":
            if self.obj is None:
                raise KubeError(404, "NotFound", "lease not found")
            out = copy.deepcopy(self.obj)
            hook, self.after_get = self.after_get, None
            if hook:
                hook()
            return out
        if method == "POST":
            if self.obj is not None:
                raise KubeError(409, "AlreadyExists", "lease exists")
        elif method == "PUT" and body["metadata"].get("resourceVersion") != str(self.version):
            raise KubeError(409, "Conflict", "the object has been modified")
        self.version += 1
        self.obj = copy.deepcopy(body)
        self.obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.obj)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def elector(store: LeaseStore, who: str, clock: Clock, **timing: float) -> LeaderElector:
    config = LeaseConfig(namespace="ops", name="lead", identity=who, **timing)
    return LeaderElector(store, config, clock=clock)  # type: ignore[arg-type]


def test_standby_takes_over_only_after_the_record_stops_changing_for_the_duration() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.try_acquire_or_renew() and store.obj and store.obj["spec"]["holderIdentity"] == "a"
    assert not b.try_acquire_or_renew()
    for _ in range(5):  # a renews every 3 s: b never sees an unchanged record for 10 s
        clock.now += 3
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    clock.now += 9.9  # a died right after its last renewal
    assert not b.try_acquire_or_renew()
    clock.now += 0.2
    assert b.try_acquire_or_renew()
    spec = store.obj["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1 and spec["leaseDurationSeconds"] == 10
    assert not a.try_acquire_or_renew()  # the old leader, back, is a standby now


def test_two_standbys_racing_for_an_expired_lease_one_wins() -> None:
    store, clock = LeaseStore(), Clock()
    assert elector(store, "dead", clock).try_acquire_or_renew()
    b, c = elector(store, "b", clock), elector(store, "c", clock)
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.now += 11
    # c reads, then b reads and writes first; c's write carries a stale resourceVersion
    def b_first() -> None:
        b.try_acquire_or_renew()

    store.after_get = b_first
    assert not c.try_acquire_or_renew()
    assert store.obj is not None and store.obj["spec"]["holderIdentity"] == "b"


def test_release_hands_over_at_the_next_poll() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    a.release()
    assert b.try_acquire_or_renew()  # no wait for the duration


def test_holder_gives_up_after_the_renew_deadline_when_the_api_is_away() -> None:
    store = LeaseStore()
    a = LeaderElector(store, LeaseConfig(namespace="ops", name="lead", identity="a", duration_s=0.2,  # type: ignore[arg-type]
                                         renew_s=0.02, retry_s=0.02))
    assert a.try_acquire_or_renew()
    store.down = True
    lost: list[str] = []
    stop = threading.Event()
    worker = threading.Thread(target=a.keep_renewing, args=(stop, lost.append))
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and len(lost) == 1 and "no renewal" in lost[0]
    assert a.config.renew_deadline_s < a.config.duration_s  # it stops before a standby may start


def test_holder_learns_it_lost_the_lease() -> None:
    store, clock = LeaseStore(), Clock()
    a = LeaderElector(store, LeaseConfig(namespace="ops", name="lead", identity="a", duration_s=1,  # type: ignore[arg-type]
                                         renew_s=0.01, retry_s=0.01), clock=clock)
    assert a.try_acquire_or_renew()
    assert store.obj is not None
    store.obj["spec"]["holderIdentity"] = "usurper"
    store.version += 1
    store.obj["metadata"]["resourceVersion"] = str(store.version)
    lost: list[str] = []
    a.keep_renewing(threading.Event(), lost.append)
    assert lost == ["another replica holds the lease"]


@pytest.mark.parametrize("timing", [{"duration_s": 3, "renew_s": 3}, {"duration_s": 10, "renew_s": 0},
                                    {"duration_s": 10, "renew_s": 3, "retry_s": 0}])
def test_bad_timings_are_refused(timing: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="renew"):
        LeaseConfig("ops", "lead", "", timing["duration_s"], timing["renew_s"], timing.get("retry_s", 1.0))


@pytest.mark.parametrize(("lease", "duration", "renew", "flag"), [
    ("no-slash", 10.0, 3.0, "--leader-elect"), ("/name", 10.0, 3.0, "--leader-elect"),
    ("ns/name", 3.0, 3.0, "--lease-duration/--lease-renew")])
def test_bad_flags_exit_naming_the_flag(lease: str, duration: float, renew: float, flag: str) -> None:
    from deepserve.operator.leases import run_leader_elected

    with pytest.raises(SystemExit, match=flag):
        run_leader_elected(None, lease, duration, renew, lambda: None)
