"""``deepserve tenants`` on the real API server: create (validated by the server), list, show,
suspend and resume, with the key index following the suspension."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deepserve.operator.cli import main
from deepserve.operator.kube import Kube
from deepserve.operator.tenancy.keyindex import KeyIndex
from deepserve.operator.tenancy.tenants import API_VERSION, tenant_from_object

pytestmark = pytest.mark.integration
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(cluster: Any, namespace: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``deepserve <group> --kubeconfig ... <args>`` in this process: exit code, stdout, stderr."""

    def run(group: str, *args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        ns_flag = "--keys-namespace" if group == "tenants" else "--namespace"
        rc = main([group, "--kubeconfig", cluster.kubeconfig, ns_flag, namespace, *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), rc, out.out, out.err)

    return run


@pytest.fixture
def name(tenancy_kube: Kube) -> Iterator[str]:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    yield tenant
    tenancy_kube.delete(API_VERSION, "Tenant", tenant)


def test_create_builds_the_plan_the_flags_say(cli: Cli, tenancy_kube: Kube, name: str) -> None:
    made = cli("tenants", "create", name, "--models-namespace", "team-a", "--model", "shared/tiny",
               "--model-label", "tier=gold", "--requests-per-minute", "600", "--tokens-per-minute", "200000",
               "--max-concurrent", "16", "--monthly-spend-cap", "250.00", "--keys-allowed", "1")
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"tenant/{name} created\n"
    obj = tenancy_kube.get(API_VERSION, "Tenant", name)
    assert obj is not None
    view = tenant_from_object(obj)
    assert view.plan.models.namespaces == ("team-a",) and view.plan.models.names == ("shared/tiny",)
    assert view.plan.models.labels == (("tier", "gold"),)
    assert (view.plan.requests_per_minute, view.plan.tokens_per_minute,
            view.plan.max_concurrent_requests) == (600, 200000, 16)
    assert str(view.plan.monthly_spend_cap) == "250.00" and view.plan.currency == "USD"
    assert view.keys_allowed == 1 and not view.suspended
    again = cli("tenants", "create", name, "--all-models")
    assert again.returncode == 2 and "exists already" in again.stderr


@pytest.mark.parametrize(("flags", "field"), [
    (["--all-models", "--models-namespace", "a"], "allowAll"),
    (["--all-models", "--requests-per-minute", "0"], "requestsPerMinute"),
    (["--all-models", "--monthly-spend-cap", "1e308"], "amount"),
    (["--all-models", "--keys-allowed", "3"], "keysAllowed"),
    (["--model", "no-namespace"], "names"),
])
def test_the_api_server_refuses_a_bad_plan_naming_the_field(cli: Cli, tenancy_kube: Kube, name: str,
                                                            flags: list[str], field: str) -> None:
    made = cli("tenants", "create", name, *flags)
    assert made.returncode == 1 and field in made.stderr, made.stderr
    assert tenancy_kube.get(API_VERSION, "Tenant", name) is None  # nothing half-created


def test_list_and_show_print_plan_state_and_live_keys_never_secrets(cli: Cli, name: str) -> None:
    assert cli("tenants", "create", name, "--all-models", "--requests-per-minute", "100").returncode == 0
    key = cli("keys", "create", "--tenant", name).stdout.strip()
    key_id, secret = key.split("-")[1], key.split("-", 2)[2]
    listed = cli("tenants", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "MODELS"]
    (row,) = [r.split() for r in rows if r.split()[0] == name]
    assert row == [name, "active", "all", "100", "-", "-", "-", "1/2"]
    shown = cli("tenants", "show", name)
    assert shown.returncode == 0, shown.stderr
    assert "requests/min:      100" in shown.stdout and "live keys:         1" in shown.stdout
    assert key_id in shown.stdout
    assert secret not in listed.stdout + shown.stdout + listed.stderr + shown.stderr
    missing = cli("tenants", "show", name + "-nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_suspend_refuses_the_tenants_keys_and_resume_honours_them(
        cli: Cli, cluster: Any, namespace: str, name: str) -> None:
    assert cli("tenants", "create", name, "--all-models").returncode == 0
    key = cli("keys", "create", "--tenant", name).stdout.strip()
    index = KeyIndex(Kube(cluster.api_client()), namespace)
    index.refresh()
    assert index.authenticate(key) is not None
    suspended = cli("tenants", "suspend", name)
    assert suspended.returncode == 0 and suspended.stdout == f"tenant/{name} suspended\n"
    index.refresh()
    assert index.authenticate(key) is None
    assert [r.split()[1] for r in cli("tenants", "list").stdout.splitlines() if r.split()[0] == name] == ["suspended"]
    assert cli("tenants", "resume", name).returncode == 0
    index.refresh()
    assert index.authenticate(key) is not None
    gone = cli("tenants", "suspend", name + "-nope")
    assert gone.returncode == 2 and "does not exist" in gone.stderr


def test_the_console_script_runs_tenants(cluster: Any, namespace: str, name: str) -> None:
    """The real entry point in its own process, as a user runs it."""
    cmd = [sys.executable, "-m", "deepserve.operator.cli", "tenants", "--kubeconfig", cluster.kubeconfig,
           "--keys-namespace", namespace]
    made = subprocess.run([*cmd, "create", name, "--all-models"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert made.returncode == 0, made.stderr
    listed = subprocess.run([*cmd, "list"], capture_output=True, text=True, timeout=60)
    assert any(line.split()[0] == name for line in listed.stdout.splitlines()[1:]), listed.stdout
