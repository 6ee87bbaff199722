"""KeyIndex: the gateway's Authenticator, fed from Tenants and key Secrets by a relist loop.

Every ``interval_s`` (default 1 s) a background thread lists the Tenants and the key
Secrets and swaps in a new immutable snapshot, so a deleted (revoked) key or a suspended
tenant is refused on every replica within about one interval plus one list. Requests
never touch the API server: :meth:`KeyIndex.authenticate` reads the snapshot, checks
expiry against the clock at request time and compares hashes in constant time.

When the seam can watch (``Kube.watch``), two more threads watch the Tenants and the key
Secrets, and any event wakes the relist at once, so a revocation is seen within one watch
notification plus one list (tens of milliseconds) instead of up to one interval. The watch
is only a trigger: the snapshot is always built from a full list, the relist keeps running
as the fallback (a watch that breaks, or silently stops, costs at most the interval), and
staleness is measured from the last good list, so the rule below is unchanged.

When the API server cannot be read for ``max_staleness_s`` the index fails closed:
every key is refused (a revocation must never be missed) and :attr:`healthy` turns
False so the readiness probe takes the replica out of its Service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.tenancy import Principal
from deepserve.operator.tenancy.keys import (
    KEY_SELECTOR,
    KeyRecord,
    hash_secret,
    record_from_secret,
    split_key,
)
from deepserve.operator.tenancy.tenants import API_VERSION, KIND, TenantView, tenant_from_object

log = logging.getLogger(__name__)
_DUMMY_SALT = b"\0" * 16


@dataclass(frozen=True)
class _Entry:
    record: KeyRecord
    principal: Principal


def build_snapshot(tenants: list[dict[str, Any]], secrets: list[dict[str, Any]],
                   now: datetime) -> dict[str, _Entry]:
    """key_id -> entry for every key of an existing, unsuspended tenant.

    Of a tenant's keys live at ``now`` only the newest ``keysAllowed`` count, so even two
    racing ``keys create`` calls cannot give a tenant a third working key.
    """
    views: dict[str, TenantView] = {}
    for obj in tenants:
        try:
            view = tenant_from_object(obj)
        except SpecError as e:
            log.warning("Tenant %s ignored: %s", (obj.get("metadata") or {}).get("name"), e)
            continue
        if not view.suspended:
            views[view.name] = view
    by_tenant: dict[str, list[KeyRecord]] = {}
    for obj in secrets:
        rec = record_from_secret(obj)
        if rec is None:
            log.warning("key Secret %s is malformed; its key is refused",
                        (obj.get("metadata") or {}).get("name"))
            continue
        if rec.tenant in views and rec.live(now):
            by_tenant.setdefault(rec.tenant, []).append(rec)
    out: dict[str, _Entry] = {}
    for tenant, recs in by_tenant.items():
        view = views[tenant]
        for rec in sorted(recs, key=lambda r: (r.created, r.key_id), reverse=True)[:view.keys_allowed]:
            out[rec.key_id] = _Entry(rec, Principal(tenant=tenant, key_id=rec.key_id, plan=view.plan))
    return out


class KeyIndex:
    """Authenticator over the cluster's Tenants and key Secrets (in ``namespace``)."""

    def __init__(self, kube: Any, namespace: str, *, interval_s: float = 1.0,
                 max_staleness_s: float = 30.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._kube = kube
        self._namespace = namespace
        self._interval = interval_s
        self._max_staleness = max_staleness_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._refreshed_at = float("-inf")  # time.monotonic() of the last good refresh
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by a watch event: relist now
        self._thread: threading.Thread | None = None
        self._watchers: list[threading.Thread] = []
        self.watch_timeout_s = 300  # each watch is re-opened after this (the server ends it)
        self.watch_events = 0  # events seen by the watches (tests, debugging)

    def refresh(self) -> int:
        """List Tenants and key Secrets once and swap the snapshot; returns the keys indexed."""
        tenants = self._kube.list(API_VERSION, KIND)
        secrets = self._kube.list("v1", "Secret", self._namespace, label_selector=KEY_SELECTOR)
        self._entries = build_snapshot(tenants, secrets, self._clock())
        self._refreshed_at = time.monotonic()
        return len(self._entries)

    @property
    def healthy(self) -> bool:
        """True while the snapshot is younger than ``max_staleness_s``."""
        return time.monotonic() - self._refreshed_at <= self._max_staleness

    def authenticate(self, presented_key: str) -> Principal | None:
        """The key's principal, or None for a malformed, unknown, revoked or expired key."""
        parts = split_key(presented_key)
        if parts is None or not self.healthy:
            return None
        key_id, secret = parts
        entry = self._entries.get(key_id)
        if entry is None:
            hash_secret(_DUMMY_SALT, secret)  # same work as a known id: no timing oracle
            return None
        if not entry.record.matches(secret) or not entry.record.live(self._clock()):
            return None
        return entry.principal

    def start(self, watch: bool = True) -> None:
        """Refresh once (raising if the API server cannot be read), then keep refreshing; with
        ``watch`` (and a seam that has ``watch``) also relist at once on every watch event."""
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="key-index", daemon=True)
        self._thread.start()
        if watch and hasattr(self._kube, "watch"):
            for name, args, kw in (("tenants", (API_VERSION, KIND), {}),
                                   ("secrets", ("v1", "Secret", self._namespace),
                                    {"label_selector": KEY_SELECTOR})):
                t = threading.Thread(target=self._watch, args=(name, args, kw), name=f"key-index-watch-{name}",
                                     daemon=True)
                t.start()
                self._watchers.append(t)

    def stop(self) -> None:
        """Stop the refresh loop (a watch thread ends at its next event or watch timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self, name: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        """Wake the relist on every event of one watch; re-open it when it ends or fails."""
        while not self._stop.is_set():
            try:
                for event in self._kube.watch(*args, timeout_s=self.watch_timeout_s, **kw):
                    if self._stop.is_set():
                        return
                    if event.get("type") != "BOOKMARK":
                        self.watch_events += 1
                        self._wake.set()
            except Exception as e:  # the relist still runs: a failed watch only costs latency
                log.debug("key index watch of %s ended: %s", name, e)
                self._stop.wait(1.0)

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception as e:  # any failure: keep the last snapshot until it goes stale
                if not failing:
                    log.warning("key index refresh failed (keys refused after %.0f s stale): %s",
                                self._max_staleness, e)
                failing = True
            else:
                if failing:
                    log.info("key index refresh recovered")
                failing = False
