"""ShardCoordinator over an in-memory Lease store that enforces resourceVersion preconditions:
replicas split the shards, never hold one twice, take a dead replica's shards after the
Lease duration, hand shards back on a clean stop, and give up before anyone may take over."""

from __future__ import annotations

import copy
import threading
from collections import Counter
from typing import Any

import pytest

from deepserve.operator.kube import KubeError
from deepserve.operator.leases import LeaseConfig
from deepserve.operator.sharding import LABEL_SET, ShardConfig, ShardCoordinator, ShardSet, shard_of

pytestmark = pytest.mark.unit
PREFIX = "/apis/coordination.k8s.io/v1/namespaces/ops/leases"


class LeaseStore:
    """LIST (by label), GET, POST, PUT and DELETE of Leases; a stale resourceVersion is 409."""

    def __init__(self) -> None:
        self.objs: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.down = False

    def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> dict[str, Any]:
        if self.down:
            raise KubeError(0, "unreachable", "connection refused")
        name = path[len(PREFIX) + 1:] if path.startswith(PREFIX + "/") else ""
        if method == "GET" and not name:
            return {"items": [copy.deepcopy(o) for o in self.objs.values()]}
        if method == "GET":
            if name not in self.objs:
                raise KubeError(404, "NotFound", name)
            return copy.deepcopy(self.objs[name])
        if method == "DELETE":
            self.objs.pop(name, None)
            return {}
        name = body["metadata"]["name"]
        if method == "POST" and name in self.objs:
            raise KubeError(409, "AlreadyExists", name)
        if method == "PUT" and (name not in self.objs or body["metadata"].get("resourceVersion")
                                != self.objs[name]["metadata"]["resourceVersion"]):
            raise KubeError(409, "Conflict", name)
        self.version += 1
        self.objs[name] = copy.deepcopy(body)
        self.objs[name]["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.objs[name])

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None,
             **_: Any) -> list[dict[str, Any]]:
        assert label_selector and label_selector.startswith(LABEL_SET)
        return list(self.request("GET", PREFIX)["items"])

    def holders(self) -> dict[int, str]:
        out = {}
        for name, obj in self.objs.items():
            if "-shard-" in name and obj["spec"]["holderIdentity"]:
                out[int(name.rsplit("-", 1)[1])] = obj["spec"]["holderIdentity"]
        return out


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replica(store: LeaseStore, who: str, clock: Clock, shards: int = 12) -> ShardCoordinator:
    lease = LeaseConfig(namespace="ops", name="op", identity=who, duration_s=10, renew_s=3, retry_s=1)
    return ShardCoordinator(store, ShardConfig(lease=lease, shards=shards), ShardSet(shards), clock=clock)  # type: ignore[arg-type]


def run(replicas: list[ShardCoordinator], clock: Clock, seconds: float) -> None:
    """Tick every replica once a second for ``seconds``, checking no shard is ever held twice."""
    for _ in range(int(seconds)):
        clock.now += 1
        for r in replicas:
            r.tick()
        owned = Counter(s for r in replicas for s in r.set.owned)
        assert all(n == 1 for n in owned.values()), owned


def test_shard_of_is_stable_and_spreads() -> None:
    assert shard_of("team-a", "llama", 16) == shard_of("team-a", "llama", 16)
    counts = Counter(shard_of("ns", f"m{i}", 16) for i in range(1600))
    assert len(counts) == 16 and min(counts.values()) > 60  # roughly 100 each


def test_three_replicas_split_the_shards_and_each_is_held_once() -> None:
    store, clock = LeaseStore(), Clock()
    rs = [replica(store, n, clock) for n in "abc"]
    run(rs, clock, 40)  # the first to start takes everything; the others get their share after a duration
    assert sorted(len(r.set.owned) for r in rs) == [4, 4, 4]
    assert set().union(*(r.set.owned for r in rs)) == set(range(12))
    assert {s: h for s, h in store.holders().items()} == {s: r.identity for r in rs for s in r.set.owned}


def test_a_dead_replicas_shards_are_taken_after_the_lease_duration() -> None:
    store, clock = LeaseStore(), Clock()
    rs = [replica(store, n, clock) for n in "abc"]
    run(rs, clock, 40)
    dead, survivors = rs[0], rs[1:]
    orphaned = set(dead.set.owned)
    waited = 0
    while not orphaned <= set().union(*(r.set.owned for r in survivors)) and waited < 20:  # the dead one ticks no more
        run(survivors, clock, 1)
        waited += 1
    assert 10 <= waited <= 12, waited  # the duration, plus up to a poll, never before
    assert sorted(len(r.set.owned) for r in survivors) == [6, 6]


def test_a_restarted_replica_gets_a_share_without_the_others_churning() -> None:
    store, clock = LeaseStore(), Clock()
    rs = [replica(store, n, clock) for n in "abc"]
    run(rs, clock, 40)
    rs = [*rs[1:], replica(store, "a2", clock)]  # a SIGKILLed, its pod restarted with a new identity
    moves = 0
    before = {s: h for s, h in store.holders().items()}
    for _ in range(60):
        run(rs, clock, 1)
        now = store.holders()
        moves += sum(1 for s, h in now.items() if before.get(s) not in (h, "a"))  # moves between live ones
        before = now
    assert sorted(len(r.set.owned) for r in rs) == [4, 4, 4]
    assert moves <= 2, moves


def test_a_clean_stop_hands_every_shard_back_at_once() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = replica(store, "a", clock), replica(store, "b", clock)
    run([a, b], clock, 40)
    a.release_all()
    assert not a.set.owned and all(h == "b" for h in store.holders().values())
    run([b], clock, 2)  # no wait for the duration
    assert len(b.set.owned) == 12


def test_holder_stops_acting_before_anyone_may_take_over_when_the_api_is_away() -> None:
    store, clock = LeaseStore(), Clock()
    a = replica(store, "a", clock)
    run([a], clock, 3)
    assert len(a.set.owned) == 12
    renewed = clock.now
    store.down = True
    lost_at = None
    for _ in range(12):
        clock.now += 1
        with pytest.raises(KubeError) as err:
            a.tick()
        a.drop_unrenewed(err.value)  # what run() does after a failed round
        if not a.set.owned and lost_at is None:
            lost_at = clock.now
    assert lost_at is not None and lost_at - renewed < a.config.lease.duration_s  # before a takeover may start


def test_acting_guards_a_reconcile_and_a_drop_waits_for_it() -> None:
    shards = ShardSet(4)
    key = ("ns", "m")
    with shards.acting(*key) as mine:
        assert not mine  # not held: the reconcile does nothing
    shards.add(shards.shard(*key))
    started, release = threading.Event(), threading.Event()

    def reconcile() -> None:
        with shards.acting(*key) as mine:
            assert mine
            started.set()
            release.wait(5)

    worker = threading.Thread(target=reconcile)
    worker.start()
    started.wait(5)
    dropped = threading.Thread(target=shards.drop, args=(shards.shard(*key), 5))
    dropped.start()
    dropped.join(0.2)
    assert dropped.is_alive() and not shards.owns(*key)  # no new reconcile starts; the drop waits
    release.set()
    dropped.join(5)
    worker.join(5)
    assert not dropped.is_alive()
