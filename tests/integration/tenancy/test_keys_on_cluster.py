"""Keys on the real API server: the CLI mints and revokes, KeyIndex follows within 5 s."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deepserve.operator.cli import main
from deepserve.operator.commands.keys import revoke_key
from deepserve.operator.kube import Kube
from deepserve.operator.tenancy.keyindex import KeyIndex
from deepserve.operator.tenancy.keys import KEY_SELECTOR, split_key
from deepserve.operator.tenancy.tenants import API_VERSION, build_tenant

pytestmark = pytest.mark.integration
REVOKE_DEADLINE_S = 5.0


def _cli(cluster: Any, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real console script in its own process (as a user runs it)."""
    cmd = [sys.executable, "-m", "deepserve.operator.cli", "-v", "keys",
           "--kubeconfig", cluster.kubeconfig, "--namespace", namespace, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture
def cli(cluster: Any, namespace: str,
        capsys: pytest.CaptureFixture[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The same CLI in this process (seconds faster per call): exit code, stdout, stderr."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        rc = main(["keys", "--kubeconfig", cluster.kubeconfig, "--namespace", namespace, *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), rc, out.out, out.err)

    return run


@pytest.fixture
def tenant(tenancy_kube: Kube) -> Iterator[str]:
    name = f"acme-{uuid.uuid4().hex[:6]}"
    tenancy_kube.create(build_tenant(name, {"plan": {"models": {"allowAll": True},
                                                      "requestsPerMinute": 100}}))
    yield name
    tenancy_kube.delete(API_VERSION, "Tenant", name)


def _wait(check: Any, timeout: float) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the deadline"
        time.sleep(0.05)
    return time.monotonic() - start


def test_create_accept_revoke_refuse_within_5s(cluster: Any, tenancy_kube: Kube, namespace: str,
                                                tenant: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    index = KeyIndex(Kube(cluster.api_client()), namespace, interval_s=1.0)
    index.start()
    try:
        made = _cli(cluster, namespace, "create", "--tenant", tenant)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert split_key(key) is not None and made.stdout.count("\n") == 1  # printed once, alone
        key_id = key.split("-")[1]
        principal = None

        def accepted() -> bool:
            nonlocal principal
            principal = index.authenticate(key)
            return principal is not None

        _wait(accepted, REVOKE_DEADLINE_S)
        assert principal is not None and principal.tenant == tenant
        assert principal.plan.requests_per_minute == 100
        assert index.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None

        # Only a salted hash is stored: the key's secret is nowhere in the Secret.
        stored = tenancy_kube.list("v1", "Secret", namespace, label_selector=KEY_SELECTOR)
        assert len(stored) == 1 and key.split("-", 2)[2] not in str(stored)

        listed = _cli(cluster, namespace, "list", "--tenant", tenant)
        assert listed.returncode == 0 and key_id in listed.stdout and "live" in listed.stdout

        revoked = _cli(cluster, namespace, "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        latency = _wait(lambda: index.authenticate(key) is None, REVOKE_DEADLINE_S)
        print(f"revocation took effect {latency:.2f} s after `keys revoke` returned")
        for text in (made.stderr, listed.stdout, listed.stderr, revoked.stderr, caplog.text):
            assert key.split("-", 2)[2] not in text  # the secret is never logged
    finally:
        index.stop()


def test_expired_key_is_refused(cluster: Any, namespace: str, tenant: str, cli: Any) -> None:
    index = KeyIndex(Kube(cluster.api_client()), namespace, interval_s=0.5)
    index.start()
    try:
        made = cli("create", "--tenant", tenant, "--expires", "3s")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        _wait(lambda: index.authenticate(key) is not None, REVOKE_DEADLINE_S)
        _wait(lambda: index.authenticate(key) is None, 5.0)  # at most 3 s after creation
    finally:
        index.stop()


def test_two_live_keys_at_most_and_rotation(cluster: Any, namespace: str, tenant: str,
                                            tenancy_kube: Kube, cli: Any) -> None:
    first = cli("create", "--tenant", tenant).stdout.strip()
    second = cli("create", "--tenant", tenant).stdout.strip()
    assert split_key(first) and split_key(second)
    third = cli("create", "--tenant", tenant)
    assert third.returncode == 2 and "already holds 2 live keys" in third.stderr
    assert third.stdout == ""

    rotated = cli("rotate", first.split("-")[1])
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    index = KeyIndex(Kube(cluster.api_client()), namespace)
    index.refresh()
    assert index.authenticate(first) is None
    assert index.authenticate(second) is not None and index.authenticate(new) is not None

    missing = cli("create", "--tenant", "no-such-tenant")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert cli("revoke", "aaaaaaaaaaaa").returncode == 2
    bad = cli("create", "--tenant", tenant, "--expires", "soon")
    assert bad.returncode == 2 and "--expires" in bad.stderr


def test_suspended_or_deleted_tenant_keys_are_refused(cluster: Any, namespace: str,
                                                     tenancy_kube: Kube, tenant: str, cli: Any) -> None:
    key = cli("create", "--tenant", tenant).stdout.strip()
    index = KeyIndex(Kube(cluster.api_client()), namespace)
    index.refresh()
    assert index.authenticate(key) is not None
    obj = tenancy_kube.get(API_VERSION, "Tenant", tenant)
    assert obj is not None
    obj["spec"]["suspended"] = True
    tenancy_kube.request("PUT", f"/apis/{API_VERSION}/tenants/{tenant}", body=obj)
    index.refresh()
    assert index.authenticate(key) is None
    obj = tenancy_kube.get(API_VERSION, "Tenant", tenant)
    assert obj is not None
    obj["spec"]["suspended"] = False
    tenancy_kube.request("PUT", f"/apis/{API_VERSION}/tenants/{tenant}", body=obj)
    index.refresh()
    assert index.authenticate(key) is not None
    tenancy_kube.delete(API_VERSION, "Tenant", tenant)
    index.refresh()
    assert index.authenticate(key) is None


def test_revocation_latency_from_the_secret_delete(cluster: Any, namespace: str, tenant: str,
                                                   tenancy_kube: Kube, cli: Any) -> None:
    """Time from the DELETE of the key Secret to the first refusal, with the default 1 s relist
    alone (the fallback when the watch is down)."""
    index = KeyIndex(Kube(cluster.api_client()), namespace)
    index.start(watch=False)
    latencies = []
    try:
        for _ in range(3):
            key = cli("create", "--tenant", tenant).stdout.strip()
            _wait(lambda key=key: index.authenticate(key) is not None, REVOKE_DEADLINE_S)
            revoked = revoke_key(tenancy_kube, namespace, key.split("-")[1])
            assert revoked
            latencies.append(_wait(lambda key=key: index.authenticate(key) is None, REVOKE_DEADLINE_S))
    finally:
        index.stop()
    print("revocation latency s:", " ".join(f"{x:.2f}" for x in latencies))
    assert max(latencies) < REVOKE_DEADLINE_S


def test_the_watch_refuses_a_revoked_key_well_inside_the_relist_interval(
        cluster: Any, namespace: str, tenant: str, tenancy_kube: Kube, cli: Any) -> None:
    """With a 30 s relist only the watch can make revocation fast: each must land in < 1 s."""
    index = KeyIndex(Kube(cluster.api_client()), namespace, interval_s=30.0, max_staleness_s=60.0)
    index.start()
    latencies = []
    try:
        for _ in range(3):
            key = cli("create", "--tenant", tenant).stdout.strip()
            _wait(lambda key=key: index.authenticate(key) is not None, REVOKE_DEADLINE_S)
            assert revoke_key(tenancy_kube, namespace, key.split("-")[1])
            latencies.append(_wait(lambda key=key: index.authenticate(key) is None, REVOKE_DEADLINE_S))
        # a suspension reaches it through the Tenant watch just as fast
        key = cli("create", "--tenant", tenant).stdout.strip()
        _wait(lambda: index.authenticate(key) is not None, REVOKE_DEADLINE_S)
        tenancy_kube.request("PATCH", f"/apis/{API_VERSION}/tenants/{tenant}", body={"spec": {"suspended": True}},
                             content_type="application/merge-patch+json")
        suspended = _wait(lambda: index.authenticate(key) is None, REVOKE_DEADLINE_S)
    finally:
        index.stop()
    print("watch revocation latency s:", " ".join(f"{x:.3f}" for x in latencies), f"suspension {suspended:.3f}")
    assert index.watch_events > 0
    assert max(latencies) < 1.0 and suspended < 1.0
