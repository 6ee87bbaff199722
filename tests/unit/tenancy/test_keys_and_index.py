"""Key minting, hashing and the KeyIndex snapshot rules (a dict-backed seam for the API)."""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from deepserve.operator.tenancy.keyindex import KeyIndex, build_snapshot
from deepserve.operator.tenancy.keys import (
    build_key_secret,
    new_key,
    parse_duration,
    record_from_secret,
    split_key,
)
from deepserve.operator.tenancy.tenants import build_tenant

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _as_stored(secret: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns for a Secret created with stringData."""
    out = {k: v for k, v in secret.items() if k != "stringData"}
    out["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in secret["stringData"].items()}
    return out


class ListSeam:
    """Answers Kube.list from two lists; ``fail`` makes it raise like an unreachable server."""

    def __init__(self) -> None:
        self.tenants: list[dict[str, Any]] = [build_tenant("acme", {"plan": {"models": {"allowAll": True}}})]
        self.secrets: list[dict[str, Any]] = []
        self.fail = False

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        if self.fail:
            raise ConnectionError("API server unreachable")
        return self.tenants if kind == "Tenant" else self.secrets

    def mint(self, tenant: str = "acme", created: datetime = T0,
             expires: datetime | None = None) -> str:
        key, key_id, secret = new_key()
        self.secrets.append(_as_stored(build_key_secret(tenant, key_id, secret, "ns", created, expires)))
        return key


def test_key_format_and_only_a_hash_is_stored() -> None:
    key, key_id, secret = new_key()
    assert key == f"ds-{key_id}-{secret}" and len(key_id) == 12 and len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert split_key(key) == (key_id, secret)
    stored = _as_stored(build_key_secret("acme", key_id, secret, "ns", T0, None))
    assert secret not in str(stored) and key not in str(stored)
    rec = record_from_secret(stored)
    assert rec is not None and rec.matches(secret) and not rec.matches(secret[:-1] + "x")
    # The same secret under another key's salt hashes differently.
    other = record_from_secret(_as_stored(build_key_secret("acme", key_id, secret, "ns", T0, None)))
    assert other is not None and other.digest != rec.digest


@pytest.mark.parametrize("bad", ["", "ds-", "sk-abc", "ds-ABCDEFGHIJKL-" + "a" * 43,
                                 "ds-abcdefghijkl-short", "ds-abcdefghijkl-" + "a" * 43 + "!"])
def test_malformed_keys_do_not_parse(bad: str) -> None:
    assert split_key(bad) is None


def test_durations() -> None:
    assert parse_duration("30d") == timedelta(days=30) and parse_duration("never") is None
    for bad in ("0s", "-1d", "1w", "soon", "30"):
        with pytest.raises(ValueError, match="--expires"):
            parse_duration(bad)


def test_expiry_is_checked_at_request_time() -> None:
    seam = ListSeam()
    key = seam.mint(expires=T0 + timedelta(minutes=5))
    now = [T0 + timedelta(minutes=1)]
    index = KeyIndex(seam, "ns", clock=lambda: now[0])
    index.refresh()
    principal = index.authenticate(key)
    assert principal is not None and principal.tenant == "acme"
    now[0] = T0 + timedelta(minutes=5)  # no refresh in between
    assert index.authenticate(key) is None


def test_only_the_newest_allowed_keys_of_a_tenant_work() -> None:
    seam = ListSeam()
    keys = [seam.mint(created=T0 + timedelta(seconds=i)) for i in range(3)]  # a race made three
    snapshot = build_snapshot(seam.tenants, seam.secrets, T0 + timedelta(minutes=1))
    assert {split_key(k)[0] for k in keys[1:]} == set(snapshot)  # type: ignore[index]


def test_unknown_tenant_or_wrong_secret_is_refused() -> None:
    seam = ListSeam()
    orphan = seam.mint(tenant="gone")
    good = seam.mint()
    index = KeyIndex(seam, "ns", clock=lambda: T0)
    index.refresh()
    assert index.authenticate(orphan) is None
    assert index.authenticate(good) is not None
    assert index.authenticate(good[:-2] + ("AA" if not good.endswith("AA") else "BB")) is None
    assert index.authenticate("Bearer " + good) is None


def test_fails_closed_when_the_api_server_is_gone_too_long(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seam = ListSeam()
    key = seam.mint()
    index = KeyIndex(seam, "ns", interval_s=0.02, max_staleness_s=0.3, clock=lambda: T0)
    index.start()
    try:
        assert index.authenticate(key) is not None and index.healthy
        seam.fail = True
        time.sleep(0.1)
        assert index.authenticate(key) is not None  # brief outage: last snapshot still serves
        time.sleep(0.4)
        assert index.authenticate(key) is None and not index.healthy
        seam.fail = False
        time.sleep(0.1)
        assert index.authenticate(key) is not None and index.healthy
    finally:
        index.stop()
    assert key.split("-", 2)[2] not in caplog.text
    assert "refresh failed" in caplog.text


def test_suspended_and_malformed_are_refused() -> None:
    seam = ListSeam()
    seam.tenants.append(build_tenant("frozen", {"suspended": True}))
    frozen = seam.mint(tenant="frozen")
    bad = seam.mint()
    seam.secrets[-1]["data"]["hash"] = base64.b64encode(b"not hex").decode()
    index = KeyIndex(seam, "ns", clock=lambda: T0)
    index.refresh()
    assert index.authenticate(frozen) is None and index.authenticate(bad) is None


class WatchSeam(ListSeam):
    """ListSeam plus ``watch``: events come from a queue; ``watch_fails`` makes every watch raise."""

    def __init__(self) -> None:
        super().__init__()
        import queue

        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.watch_fails = False
        self.lists = 0

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        self.lists += 1
        return super().list(api_version, kind, namespace, label_selector)

    def watch(self, api_version: str, kind: str, namespace: str | None = None, *,
              label_selector: str | None = None, timeout_s: int = 300) -> Any:
        if self.watch_fails:
            raise ConnectionError("watch refused")
        while True:
            yield self.events.get()


def _until(check: Any, timeout: float = 2.0) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the deadline"
        time.sleep(0.005)
    return time.monotonic() - start


def test_a_watch_event_relists_at_once_not_at_the_interval() -> None:
    seam = WatchSeam()
    key = seam.mint()
    index = KeyIndex(seam, "ns", interval_s=60.0, max_staleness_s=120.0, clock=lambda: T0)
    index.start()
    try:
        assert index.authenticate(key) is not None
        seam.secrets.clear()  # revoked; without an event the 60 s relist would not see it yet
        time.sleep(0.05)
        assert index.authenticate(key) is not None
        seam.events.put({"type": "BOOKMARK", "object": {}})  # bookmarks are not changes
        time.sleep(0.05)
        assert index.authenticate(key) is not None
        seam.events.put({"type": "DELETED", "object": {}})
        assert _until(lambda: index.authenticate(key) is None) < 1.0
    finally:
        index.stop()
        seam.events.put({"type": "DELETED", "object": {}})  # let the watch threads see the stop
        seam.events.put({"type": "DELETED", "object": {}})


def test_with_the_watch_failing_the_relist_still_refuses_revoked_keys() -> None:
    seam = WatchSeam()
    seam.watch_fails = True
    key = seam.mint()
    index = KeyIndex(seam, "ns", interval_s=0.05, clock=lambda: T0)
    index.start()
    try:
        assert index.authenticate(key) is not None
        seam.secrets.clear()
        assert _until(lambda: index.authenticate(key) is None) < 1.0
        assert index.watch_events == 0 and index.healthy
    finally:
        index.stop()
