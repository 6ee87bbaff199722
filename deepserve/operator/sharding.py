"""Several operator replicas sharing the work: objects hashed into S shards, one Lease per shard.

Every replica watches everything (kopf's indexes stay complete), but reconciles only the
models whose shard it holds. Ownership lives in ``coordination.k8s.io/v1`` Leases in the
operator's namespace, with the timing rules of :mod:`deepserve.operator.leases`:

- ``<name>-shard-<i>`` for i in 0..S-1: the holder renews it every ``renew_s``; another
  replica takes it when its record has not changed for ``duration_s`` on *its own*
  monotonic clock, or at once when it is free (empty holder, or no Lease yet);
- ``<name>-member-<id>``: one per replica, renewed the same way, so every replica knows
  how many live replicas share the S shards; a replica aims at ``ceil(S / live)`` shards
  and takes free or expired ones until it holds that many;
- a replica holding more than its share gives shards back (stop acting, wait for the
  reconciles in flight in that shard, *then* empty the Lease) only after some live replica
  has held fewer than ``floor(S / live)`` for ``duration_s`` (a replica just restarted after
  a SIGKILL, whose old member Lease has not expired yet, would otherwise make the others
  hand shards back and forth);
- a holder that could not renew a shard for ``renew_deadline_s`` (< ``duration_s``) stops
  acting on it before anyone else may take it; a write refused with 409 means another
  holder: dropped at once;
- writes carry the ``resourceVersion`` read, so of two replicas racing for a shard one wins.

:class:`ShardSet` is what the controller asks (``owns``, ``acting``) and listens to (shard
gained or lost: the controller reconciles every model of a gained shard, so nothing is
missed). :class:`ShardCoordinator` runs the Lease loop on a thread.

Only :class:`deepserve.operator.kube.Kube` talks to the API server.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from deepserve.operator.kube import Kube, KubeError, resource_path
from deepserve.operator.leases import LEASE_API, LeaseConfig, _micro_time, default_identity

log = logging.getLogger(__name__)
LABEL_SET = "deepserve.io/shard-set"  # which sharded operator a Lease belongs to
LABEL_ROLE = "deepserve.io/shard-role"  # "shard" or "member"
MAX_SHARDS = 1024


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard of the object ``namespace/name``: a stable hash (the same in every process and
    release; Python's ``hash()`` is salted per process), modulo ``shards``."""
    digest = hashlib.blake2b(f"{namespace}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def _preference(identity: str, shard: int) -> int:
    """Rendezvous score: replicas prefer different free shards, so they rarely race for one."""
    return int.from_bytes(hashlib.blake2b(f"{identity}/{shard}".encode(), digest_size=8).digest(), "big")


class ShardSet:
    """The shards this process holds; thread-safe.

    ``acting(key)`` brackets one reconcile: it yields False for a model of a shard not held,
    and a shard is given up only after the reconciles in flight in it have finished.
    """

    def __init__(self, shards: int) -> None:
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards: need 1..{MAX_SHARDS}, got {shards}")
        self.shards = shards
        self._owned: set[int] = set()
        self._inflight: dict[int, int] = {}
        self._cv = threading.Condition()
        self._listeners: list[Callable[[frozenset[int], frozenset[int]], None]] = []

    def shard(self, namespace: str, name: str) -> int:
        return shard_of(namespace, name, self.shards)

    def owns(self, namespace: str, name: str) -> bool:
        """Whether this process holds the shard of ``namespace/name`` now."""
        return self.shard(namespace, name) in self._owned

    @property
    def owned(self) -> frozenset[int]:
        with self._cv:
            return frozenset(self._owned)

    @contextlib.contextmanager
    def acting(self, namespace: str, name: str) -> Iterator[bool]:
        """``with shards.acting(ns, name) as mine:`` — mine is False when the shard is not held;
        while True, the shard is not given up (``drop`` waits)."""
        shard = self.shard(namespace, name)
        with self._cv:
            mine = shard in self._owned
            if mine:
                self._inflight[shard] = self._inflight.get(shard, 0) + 1
        try:
            yield mine
        finally:
            if mine:
                with self._cv:
                    self._inflight[shard] -= 1
                    self._cv.notify_all()

    def subscribe(self, listener: Callable[[frozenset[int], frozenset[int]], None]) -> None:
        """``listener(gained, lost)`` after every change (called on the coordinator's thread)."""
        self._listeners.append(listener)

    def add(self, shard: int) -> None:
        with self._cv:
            self._owned.add(shard)
        self._notify(frozenset({shard}), frozenset())

    def drop(self, shard: int, wait_s: float) -> bool:
        """Stop acting on ``shard``; wait up to ``wait_s`` for its reconciles in flight.
        Returns False when some were still running at the deadline."""
        deadline = time.monotonic() + wait_s
        with self._cv:
            self._owned.discard(shard)
            while self._inflight.get(shard, 0) > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            drained = self._inflight.get(shard, 0) == 0
        self._notify(frozenset(), frozenset({shard}))
        return drained

    def _notify(self, gained: frozenset[int], lost: frozenset[int]) -> None:
        for listener in list(self._listeners):
            try:
                listener(gained, lost)
            except Exception:  # a listener's bug must not stop the Lease loop
                log.exception("shard listener failed")


@dataclass(frozen=True)
class ShardConfig:
    """Where the shard Leases live, how many shards, and the Lease timings."""

    lease: LeaseConfig
    shards: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards: need 1..{MAX_SHARDS}, got {self.shards}")

    def shard_lease(self, shard: int) -> str:
        return f"{self.lease.name}-shard-{shard}"

    def member_lease(self, identity: str) -> str:
        return f"{self.lease.name}-member-{hashlib.blake2b(identity.encode(), digest_size=6).hexdigest()}"


class ShardCoordinator:
    """The Lease loop of one replica: membership, acquire, renew, rebalance, release.

    ``clock`` is monotonic seconds and ``wall`` writes the Lease times; both are seams for tests.
    """

    def __init__(self, kube: Kube, config: ShardConfig, shards: ShardSet,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], Any] | None = None) -> None:
        import datetime

        self.kube = kube
        self.config = config
        self.set = shards
        self.identity = config.lease.identity or default_identity()
        self._clock = clock
        self._wall = wall or (lambda: datetime.datetime.now(datetime.UTC))
        self._seen: dict[str, tuple[tuple[Any, ...], float]] = {}  # lease name -> (record, when it changed)
        self._renewed: dict[int, float] = {}  # shard -> monotonic time of our last successful write
        self._member_renewed = float("-inf")
        self._starving_since: float | None = None
        self._ticks = 0
        self.last_ok = float("-inf")  # last tick that reached the API server
        self.last_attempt = float("-inf")  # last tick, successful or not (the liveness probe)

    # -- Lease plumbing -------------------------------------------------------------------------
    @property
    def _ns(self) -> str:
        return self.config.lease.namespace

    def _body(self, name: str, role: str, holder: str, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time(self._wall())
        spec = (previous or {}).get("spec") or {}
        mine = spec.get("holderIdentity") == holder and holder
        body = dict(previous) if previous else {
            "apiVersion": LEASE_API, "kind": "Lease",
            "metadata": {"name": name, "namespace": self._ns,
                         "labels": {LABEL_SET: self.config.lease.name, LABEL_ROLE: role}}}
        body["spec"] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(self.config.lease.duration_s)) if holder else 1,
            "acquireTime": spec.get("acquireTime", now) if mine else now,
            "renewTime": now,
            "leaseTransitions": int(spec.get("leaseTransitions", 0)) + (0 if mine or not spec else 1),
        }
        return body

    def _write(self, name: str, role: str, holder: str, previous: dict[str, Any] | None) -> bool:
        """Create or replace (with the resourceVersion read) one Lease; False on a lost race."""
        body = self._body(name, role, holder, previous)
        timeout = self.config.lease.renew_s
        try:
            if previous is None:
                self.kube.request("POST", resource_path(LEASE_API, "Lease", self._ns), body=body, timeout=timeout)
            else:
                self.kube.request("PUT", resource_path(LEASE_API, "Lease", self._ns, name), body=body,
                                  timeout=timeout)
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True

    def _expired(self, name: str, lease: dict[str, Any]) -> bool:
        """Whether a Lease's record has not changed for its duration on our clock (or is free)."""
        spec = lease.get("spec") or {}
        if not spec.get("holderIdentity"):
            return True
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"),
                  spec.get("leaseDurationSeconds"))
        seen = self._seen.get(name)
        if seen is None or seen[0] != record:
            self._seen[name] = (record, self._clock())
            return False
        duration = float(spec.get("leaseDurationSeconds") or self.config.lease.duration_s)
        return self._clock() >= seen[1] + duration

    # -- one round ------------------------------------------------------------------------------
    def tick(self) -> None:
        """One round: list the Leases, renew ours, then acquire or give back to reach our share."""
        cfg, lease_cfg = self.config, self.config.lease
        self.last_attempt = self._clock()
        items = self.kube.list(LEASE_API, "Lease", self._ns, label_selector=f"{LABEL_SET}={lease_cfg.name}")
        self.last_ok = self._clock()
        by_name = {o["metadata"]["name"]: o for o in items}
        now = self._clock()
        self._ticks += 1

        # membership: our own member Lease, and who else is alive
        member_name = cfg.member_lease(self.identity)
        if now - self._member_renewed >= lease_cfg.renew_s and self._write(
                member_name, "member", self.identity, by_name.get(member_name)):
            self._member_renewed = now
        live = {self.identity}
        for name, member in by_name.items():
            if (member["metadata"].get("labels") or {}).get(LABEL_ROLE) != "member" or name == member_name:
                continue
            if not self._expired(name, member):
                live.add(str(member["spec"].get("holderIdentity")))
            elif (member.get("spec") or {}).get("holderIdentity") and now - self._seen[name][1] > 3 * lease_cfg.duration_s:
                self._delete_stale(name, member)

        held_by: dict[str, int] = {m: 0 for m in live}
        for shard in range(cfg.shards):
            obj = by_name.get(cfg.shard_lease(shard))
            holder = str(((obj or {}).get("spec") or {}).get("holderIdentity") or "")
            if obj is not None and holder in held_by and holder != self.identity and not self._expired(
                    cfg.shard_lease(shard), obj):
                held_by[holder] += 1

        # renew what we hold; drop what we cannot keep
        for shard in sorted(self.set.owned):
            name = cfg.shard_lease(shard)
            current = by_name.get(name)
            owner = ((current or {}).get("spec") or {}).get("holderIdentity")
            if current is None or owner != self.identity:
                self._lose(shard, f"lease {name} now held by {owner or 'nobody'}")
                continue
            if now - self._renewed.get(shard, float("-inf")) < lease_cfg.renew_s:
                continue
            try:
                ok = self._write(name, "shard", self.identity, current)
            except Exception as e:
                if now - self._renewed.get(shard, now) >= lease_cfg.renew_deadline_s:
                    self._lose(shard, f"no renewal for {lease_cfg.renew_deadline_s:.0f}s ({e})")
                continue
            if ok:
                self._renewed[shard] = now
            else:
                self._lose(shard, f"lease {name} written by another replica")
        held_by[self.identity] = len(self.set.owned)

        if self._ticks < 2:  # first round: let the member Leases of replicas started with us show up
            return
        target = math.ceil(cfg.shards / len(live))
        floor = cfg.shards // len(live)
        mine = len(self.set.owned)
        if mine < target:
            self._acquire(by_name, target - mine)
        starving = any(n < floor for m, n in held_by.items() if m != self.identity)
        if not starving or len(self.set.owned) <= floor:
            self._starving_since = None
            return
        if self._starving_since is None:
            self._starving_since = now
        elif now - self._starving_since >= lease_cfg.duration_s:
            self._starving_since = None
            self.give_back(max(self.set.owned, key=lambda s: _preference(self.identity, s)))

    def _acquire(self, by_name: dict[str, dict[str, Any]], wanted: int) -> None:
        cfg = self.config
        free = []
        for shard in range(cfg.shards):
            if shard in self.set.owned:
                continue
            obj = by_name.get(cfg.shard_lease(shard))
            if obj is None or self._expired(cfg.shard_lease(shard), obj):
                free.append(shard)
        free.sort(key=lambda s: _preference(self.identity, s), reverse=True)
        for shard in free[:wanted]:
            obj = by_name.get(cfg.shard_lease(shard))
            previous = ((obj or {}).get("spec") or {}).get("holderIdentity") or "none"
            if self._write(cfg.shard_lease(shard), "shard", self.identity, obj):
                self._renewed[shard] = self._clock()
                log.info("shard %d/%d: acquired by %s (previous holder: %s)", shard, cfg.shards, self.identity,
                         previous)
                self.set.add(shard)

    def drop_unrenewed(self, error: Exception) -> None:
        """After a failed round: stop acting on every shard not renewed for ``renew_deadline_s``
        (before any other replica may take it, at ``duration_s``)."""
        now, deadline = self._clock(), self.config.lease.renew_deadline_s
        for shard in sorted(self.set.owned):
            if now - self._renewed.get(shard, now) >= deadline:
                self._lose(shard, f"no renewal for {deadline:.0f}s ({error})")

    def _lose(self, shard: int, reason: str) -> None:
        log.warning("shard %d/%d: lost (%s); no longer reconciling its objects", shard, self.config.shards, reason)
        self.set.drop(shard, wait_s=0)
        self._renewed.pop(shard, None)

    def _delete_stale(self, name: str, obj: dict[str, Any]) -> None:
        """A member Lease of a replica long gone: delete it (if unchanged) so the list stays short."""
        body = {"preconditions": {"resourceVersion": obj["metadata"].get("resourceVersion")}}
        with contextlib.suppress(KubeError):
            self.kube.request("DELETE", resource_path(LEASE_API, "Lease", self._ns, name), body=body,
                              timeout=self.config.lease.renew_s)
        self._seen.pop(name, None)

    def give_back(self, shard: int) -> None:
        """Stop acting on ``shard``, wait for its reconciles in flight, then empty its Lease."""
        drained = self.set.drop(shard, wait_s=self.config.lease.renew_deadline_s)
        self._renewed.pop(shard, None)
        name = self.config.shard_lease(shard)
        try:
            obj = self.kube.request("GET", resource_path(LEASE_API, "Lease", self._ns, name),
                                    timeout=self.config.lease.renew_s)
            if (obj.get("spec") or {}).get("holderIdentity") == self.identity:
                self._write(name, "shard", "", obj)
            log.info("shard %d/%d: released by %s%s", shard, self.config.shards, self.identity,
                     "" if drained else " (a reconcile was still running at the deadline)")
        except Exception as e:
            log.warning("shard %d/%d: release failed (it expires by itself): %s", shard, self.config.shards, e)

    # -- the thread -----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Tick every ``retry_s`` until ``stop``; then give every shard and the membership back."""
        log.info("shards: %s joins %s (%d shards, lease duration %.0fs, renew every %.0fs)", self.identity,
                 self.config.lease.name, self.config.shards, self.config.lease.duration_s, self.config.lease.renew_s)
        while not stop.is_set():
            try:
                self.tick()
            except Exception as e:  # API server away: keep what we hold until the renew deadline
                log.warning("shards: lease round failed: %s", e)
                self.drop_unrenewed(e)
            stop.wait(self.config.lease.retry_s)
        self.release_all()

    def release_all(self) -> None:
        """On a clean stop: hand every shard back at once (others need not wait for expiry)."""
        for shard in sorted(self.set.owned):
            self.give_back(shard)
        name = self.config.member_lease(self.identity)
        with contextlib.suppress(Exception):
            self.kube.request("DELETE", resource_path(LEASE_API, "Lease", self._ns, name),
                              timeout=self.config.lease.renew_s)

    def start(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="shard-leases", daemon=True)
        thread.start()
        return thread, stop


def run_sharded(kubeconfig: str | None, lease: str, duration_s: float, renew_s: float, shards: ShardSet,
                run: Callable[[], None], health: str = "") -> int:
    """``deepserve operator run --leader-elect NAMESPACE/NAME --shards S``: run() (kopf, every
    replica) while a thread holds this replica's share of the S shard Leases; on return every
    shard is handed back at once.

    Exits (SystemExit) naming the flag when ``lease`` or the timings are malformed.
    """
    from deepserve.operator.health import HealthServer, loop_alive
    from deepserve.operator.leases import lease_config

    config = ShardConfig(lease=lease_config(lease, duration_s, renew_s), shards=shards.shards)
    kube = Kube.from_kubeconfig(kubeconfig)
    coordinator = ShardCoordinator(kube, config, shards)
    server = None
    if health:
        stale_s = max(30.0, 3 * config.lease.duration_s)
        server = HealthServer.start(health, lambda: loop_alive(coordinator.last_attempt, stale_s, {
            "role": "sharded", "identity": coordinator.identity, "shards": sorted(shards.owned)}))
    thread, stop = coordinator.start()
    try:
        run()
        return 0
    finally:
        stop.set()
        thread.join(config.lease.renew_deadline_s + config.lease.renew_s + 1)
        if server is not None:
            server.stop()
        kube.close()
