"""Leader election for operator replicas over a ``coordination.k8s.io/v1`` Lease.

kopf's own peering lets a standby take over only after the leader's peering record ages
out (60 s). Here a Lease decides instead, in the manner of client-go's leaderelection
package (https://pkg.go.dev/k8s.io/client-go/tools/leaderelection) and the Lease API
(https://kubernetes.io/docs/concepts/architecture/leases/):

- the holder writes ``spec.renewTime`` every ``renew_s`` seconds;
- a standby polls every ``retry_s`` seconds and takes the Lease once the record has not
  changed for ``duration_s`` seconds *as measured by its own monotonic clock* since it
  last saw it change (so clocks of different machines never need to agree);
- every write carries the ``resourceVersion`` it read, so of two standbys racing for an
  expired Lease exactly one wins (the other gets 409 Conflict);
- a holder that could not renew for ``renew_deadline_s`` (< ``duration_s``) gives up
  before any standby may take over, and the operator process exits;
- on a clean stop the holder releases the Lease (empty holder), so a standby takes it
  at its next poll instead of waiting out ``duration_s``.

Only :class:`deepserve.operator.kube.Kube` talks to the API server.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepserve.operator.kube import Kube, KubeError, resource_path

log = logging.getLogger(__name__)
LEASE_API = "coordination.k8s.io/v1"


def default_identity() -> str:
    """``<hostname>_<pid>_<random>``: unique per process, readable in ``kubectl get lease``."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LeaseConfig:
    """Where the Lease lives and how fast leadership moves."""

    namespace: str
    name: str = "deepserve-operator"
    identity: str = ""
    duration_s: float = 10.0
    renew_s: float = 3.0
    retry_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.namespace or not self.name:
            raise ValueError("lease: namespace and name are required")
        if not 0 < self.renew_s < self.duration_s or self.retry_s <= 0:
            raise ValueError(f"lease: need 0 < renew ({self.renew_s}s) < duration ({self.duration_s}s) "
                             f"and retry ({self.retry_s}s) > 0")

    @property
    def renew_deadline_s(self) -> float:
        """How long a holder keeps trying to renew before it gives up (before anyone may take over)."""
        return max(self.renew_s, self.duration_s - self.renew_s)


def _micro_time(now: datetime.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire, renew and release one Lease for one identity.

    ``clock`` is monotonic seconds and ``wall`` the time written into the Lease; both are
    seams for tests.
    """

    def __init__(self, kube: Kube, config: LeaseConfig, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)) -> None:
        self.kube = kube
        self.config = config
        self.identity = config.identity or default_identity()
        self._clock = clock
        self._wall = wall
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.last_renewed = float("-inf")  # monotonic time of the last successful write as holder
        self.last_attempt = float("-inf")  # monotonic time of the last try, successful or not (liveness)
        self.leading = False

    @property
    def _path(self) -> str:
        return resource_path(LEASE_API, "Lease", self.config.namespace, self.config.name)

    def _spec(self, previous: dict[str, Any], now: str) -> dict[str, Any]:
        mine = previous.get("holderIdentity") == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.config.duration_s)),
            "acquireTime": previous.get("acquireTime", now) if mine else now,
            "renewTime": now,
            "leaseTransitions": int(previous.get("leaseTransitions", 0)) + (0 if mine or not previous else 1),
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this identity holds the Lease afterwards.

        Raises KubeError (or a transport error) when the API server cannot be reached.
        """
        timeout = self.config.renew_s
        now = _micro_time(self._wall())
        self.last_attempt = self._clock()
        try:
            lease = self.kube.request("GET", self._path, timeout=timeout)
        except KubeError as e:
            if e.status != 404:
                raise
            body = {"apiVersion": LEASE_API, "kind": "Lease",
                    "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                    "spec": self._spec({}, now)}
            try:
                self.kube.request("POST", resource_path(LEASE_API, "Lease", self.config.namespace), body=body,
                                  timeout=timeout)
            except KubeError as e2:
                if e2.status == 409:  # another replica created it first
                    return False
                raise
            self.last_renewed = self._clock()
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        duration = float(spec.get("leaseDurationSeconds") or self.config.duration_s)
        if holder and holder != self.identity and self._clock() < self._observed_at + duration:
            return False  # a live leader holds it
        lease["spec"] = self._spec(spec, now)
        try:
            self.kube.request("PUT", self._path, body=lease, timeout=timeout)
        except KubeError as e:
            if e.status == 409:  # someone else wrote it since we read it
                return False
            raise
        if holder != self.identity:
            log.info("lease %s/%s: acquired by %s (previous holder: %s)", self.config.namespace,
                     self.config.name, self.identity, holder or "none")
        self.last_renewed = self._clock()
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this identity holds the Lease (True) or ``stop`` is set (False)."""
        log.info("lease %s/%s: %s waiting to lead", self.config.namespace, self.config.name, self.identity)
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    return True
            except Exception as e:  # API server away: keep waiting, it is not ours to lead yet
                log.warning("lease %s/%s: cannot read the lease: %s", self.config.namespace, self.config.name, e)
            stop.wait(self.config.retry_s)
        return False

    def keep_renewing(self, stop: threading.Event, on_lost: Callable[[str], None]) -> None:
        """Renew every ``renew_s`` until ``stop``; call ``on_lost(reason)`` once when leadership is lost
        (another holder, or no successful renewal within ``renew_deadline_s``)."""
        while not stop.wait(self.config.renew_s):
            try:
                if self.try_acquire_or_renew():
                    continue
                reason = "another replica holds the lease"
            except Exception as e:
                if self._clock() - self.last_renewed < self.config.renew_deadline_s:
                    log.warning("lease %s/%s: renewal failed, retrying: %s", self.config.namespace,
                                self.config.name, e)
                    continue
                reason = f"no renewal for {self.config.renew_deadline_s:.0f}s ({e})"
            if not stop.is_set():
                on_lost(reason)
            return

    def release(self) -> None:
        """Give the Lease up (empty holder) if this identity still holds it; errors are logged only."""
        try:
            lease = self.kube.request("GET", self._path, timeout=self.config.renew_s)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1,
                             "renewTime": _micro_time(self._wall())}
            self.kube.request("PUT", self._path, body=lease, timeout=self.config.renew_s)
            log.info("lease %s/%s: released by %s", self.config.namespace, self.config.name, self.identity)
        except Exception as e:
            log.warning("lease %s/%s: release failed (it expires by itself): %s", self.config.namespace,
                        self.config.name, e)


def lost_leadership_exit(reason: str) -> None:
    """The default ``on_lost``: leave at once, as client-go controllers do, so no two replicas act;
    the pod restarts and competes again as a standby."""
    log.error("lost the operator lease (%s); exiting", reason)
    logging.shutdown()
    os._exit(1)


def run_as_leader(kube: Kube, config: LeaseConfig, run: Callable[[], None],
                  on_lost: Callable[[str], None] = lost_leadership_exit,
                  elector: LeaderElector | None = None) -> bool:
    """Wait for the Lease, then ``run()`` (blocking) while a thread renews it; release it after.

    Returns False when interrupted before becoming leader.
    """
    elector = elector or LeaderElector(kube, config)
    stop = threading.Event()
    try:
        if not elector.acquire(stop):
            return False
    except KeyboardInterrupt:
        return False
    log.info("lease %s/%s: %s leads (duration %.0fs, renew every %.0fs)", config.namespace, config.name,
             elector.identity, config.duration_s, config.renew_s)
    renewer = threading.Thread(target=elector.keep_renewing, args=(stop, on_lost), name="lease-renewer",
                               daemon=True)
    renewer.start()
    elector.leading = True
    try:
        run()
    finally:
        elector.leading = False
        stop.set()
        renewer.join(config.renew_s + 1)
        elector.release()
    return True


def lease_config(lease: str, duration_s: float, renew_s: float) -> LeaseConfig:
    """The LeaseConfig of ``--leader-elect NAMESPACE/NAME --lease-duration --lease-renew``.

    Exits (SystemExit) naming the flag when ``lease`` or the timings are malformed.
    """
    namespace, sep, name = lease.partition("/")
    if not sep or not namespace or not name:
        raise SystemExit(f"--leader-elect {lease!r}: expected NAMESPACE/NAME of a Lease")
    try:
        return LeaseConfig(namespace=namespace, name=name, duration_s=duration_s, renew_s=renew_s,
                           retry_s=min(1.0, renew_s))
    except ValueError as e:
        raise SystemExit(f"--lease-duration/--lease-renew: {e}") from None


def run_leader_elected(kubeconfig: str | None, lease: str, duration_s: float, renew_s: float,
                       run: Callable[[], None], health: str = "") -> int:
    """``deepserve operator run --leader-elect NAMESPACE/NAME``: run() only while holding that Lease.

    ``health``: HOST:PORT of the probe endpoint, answered by a standby too (see health.py).
    Exits (SystemExit) naming the flag when ``lease`` or the timings are malformed.
    """
    from deepserve.operator.health import HealthServer, loop_alive

    config = lease_config(lease, duration_s, renew_s)
    kube = Kube.from_kubeconfig(kubeconfig)
    elector = LeaderElector(kube, config)
    server = None
    if health:
        stale_s = max(30.0, 3 * config.duration_s)
        server = HealthServer.start(health, lambda: loop_alive(elector.last_attempt, stale_s, {
            "role": "leader" if elector.leading else "standby", "identity": elector.identity}))
    try:
        return 0 if run_as_leader(kube, config, run, elector=elector) else 1
    finally:
        if server is not None:
            server.stop()
        kube.close()
