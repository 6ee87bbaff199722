"""The whole deepserve stack on a cluster, as the demo and the e2e tests run it.

Installs the Helm chart, writes a kubeconfig that authenticates as the chart's
ServiceAccount (so the chart's RBAC is what the operator really gets), and starts the
operator out of cluster and the dev-only local runner as child processes.

Credentials travel as 0600 files, never on a command line: the billing endpoint and the
operator read the ingest key file; the operator mints each model's usage write credential
into a Secret, and the local runner mounts that Secret into the engines it plays the way
a kubelet does. No wildcard write credential exists in this stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepserve.operator.dev import toolchain

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "charts" / "deepserve"
RELEASE = "deepserve"
SYSTEM_NAMESPACE = "deepserve-system"


class StackError(RuntimeError):
    """A step of bringing up the stack failed; the message says which."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_tool(name: str, *args: str, kubeconfig: str, check: bool = True,
             input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run kubectl or helm against ``kubeconfig``; raise StackError with its stderr on failure."""
    binary = toolchain.resolve().path(name)
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    proc = subprocess.run([binary, *args], env=env, capture_output=True, text=True, input=input,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise StackError(f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def helm_install(kubeconfig: str, values: dict[str, Any] | None = None, chart: Path = CHART_DIR,
                 namespace: str = SYSTEM_NAMESPACE, release: str = RELEASE,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``helm upgrade --install`` the chart with ``values`` (JSON-encoded --set-json-free file)."""
    vals = Path(os.environ.get("TMPDIR", "/tmp")) / f"deepserve-values-{os.getpid()}-{secrets.token_hex(3)}.json"
    vals.write_text(json.dumps(values or {}))
    try:
        return run_tool("helm", "upgrade", "--install", release, str(chart), "-n", namespace,
                        "--create-namespace", "-f", str(vals), "--wait=false",
                        kubeconfig=kubeconfig, timeout=timeout)
    finally:
        vals.unlink(missing_ok=True)


def service_account_kubeconfig(admin_kubeconfig: str, namespace: str, sa: str, dest: Path,
                               hours: int = 12) -> Path:
    """A kubeconfig that authenticates as ``namespace/sa`` with a bound token."""
    import yaml

    token = run_tool("kubectl", "create", "token", sa, "-n", namespace, f"--duration={hours}h",
                     kubeconfig=admin_kubeconfig).stdout.strip()
    cfg = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = cfg["clusters"][0]
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa,
                                               "namespace": namespace}}],
        "current-context": sa,
    }
    dest.write_text(yaml.safe_dump(cfg))
    dest.chmod(0o600)
    return dest


@dataclass
class ManagedProcess:
    """A child process with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the process group, then SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL at once (a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    """Start ``args`` in its own process group, logging to ``log_dir/name.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                start_new_session=True)
    return ManagedProcess(name, proc, log)


@dataclass
class Stack:
    """The operator (as the chart's ServiceAccount) and the local runner, out of cluster."""

    admin_kubeconfig: str
    work_dir: Path
    namespace: str = SYSTEM_NAMESPACE
    service_account: str = "deepserve-operator"
    billing_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ingest_key: str = field(default_factory=lambda: secrets.token_hex(32))
    billing_port: int = field(default_factory=_free_port)
    health_port: int = field(default_factory=_free_port)
    operator: ManagedProcess | None = None
    billing: ManagedProcess | None = None
    runner: ManagedProcess | None = None

    @property
    def ledger(self) -> Path:
        return self.work_dir / "ledger.db"

    @property
    def billing_url(self) -> str:
        return f"http://127.0.0.1:{self.billing_port}"

    @property
    def ingest_key_file(self) -> Path:
        """The ingest key (0600): the billing server verifies, the operator mints with it."""
        path = self.work_dir / "ingest-key"
        if not path.exists():
            self._secret_file("ingest-key", self.ingest_key)
        return path

    def operator_args(self, kubeconfig: str) -> list[str]:
        """Command line of the out-of-cluster operator."""
        return [
            sys.executable, "-m", "deepserve.operator.cli", "operator", "run",
            "--kubeconfig", kubeconfig, "--standalone", "--engine-runner", "local",
            "--resync-seconds", "10", "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
            "--usage-endpoint", f"{self.billing_url}/v1/usage",
            "--ingest-key-file", str(self.ingest_key_file),
        ]

    def start_billing(self) -> ManagedProcess:
        """Start the billing endpoint as the chart's billing container runs it."""
        token_file = self.work_dir / "billing-token"
        token_file.write_text(self.billing_token)
        token_file.chmod(0o600)
        # no --dev-wildcard-ingest: each played engine holds its own model's credential
        args = [sys.executable, "-m", "deepserve.operator.cli", "billing", "serve",
                "--ledger", str(self.ledger), "--host", "127.0.0.1", "--port", str(self.billing_port),
                "--token-file", str(token_file), "--ingest-key-file", str(self.ingest_key_file)]
        self.billing = spawn("billing", args, self.work_dir / "logs")
        self.wait_http(f"{self.billing_url}/healthz", "the billing endpoint", 60)
        return self.billing

    def start_operator(self) -> ManagedProcess:
        """Start the operator authenticated as the chart's ServiceAccount."""
        kc = service_account_kubeconfig(self.admin_kubeconfig, self.namespace, self.service_account,
                                        self.work_dir / "operator.kubeconfig")
        self.operator = spawn("operator", self.operator_args(str(kc)), self.work_dir / "logs")
        self.wait_http(f"http://127.0.0.1:{self.health_port}/healthz", "the operator's liveness", 90)
        return self.operator

    def export(self, fmt: str, account: str | None = None,
               start: str = "2000-01-01T00:00:00Z", end: str = "2100-01-01T00:00:00Z") -> str:
        """The billing endpoint's export of ``[start, end)`` in ``fmt``."""
        from urllib.parse import urlencode

        q = {"format": fmt, "from": start, "to": end, **({"account": account} if account else {})}
        req = urllib.request.Request(f"{self.billing_url}/v1/billing/export?{urlencode(q)}",
                                     headers={"Authorization": f"Bearer {self.billing_token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return str(r.read().decode())

    def start_runner(self) -> ManagedProcess:
        """Start the dev-only local runner. Engines ship usage to the endpoint in their
        engine options with the write credential of their own model, read from the Secret
        the operator made for it (the runner mounts it like a kubelet): nothing here holds
        a credential for them."""
        args = [sys.executable, "-m", "deepserve.operator.cli", "dev", "runner",
                "--kubeconfig", self.admin_kubeconfig]
        self.runner = spawn("runner", args, self.work_dir / "logs")
        return self.runner

    def _secret_file(self, name: str, value: str) -> Path:
        path = self.work_dir / name
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(value)
        return path

    def wait_http(self, url: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in (self.operator, self.billing):
                if p is not None and not p.alive():
                    raise StackError(f"{p.name} exited while waiting for {what}:\n{p.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise StackError(f"timed out waiting for {what} at {url}")

    def stop(self) -> None:
        for p in (self.runner, self.operator, self.billing):
            if p is not None:
                p.stop(timeout=60 if p is self.runner else 30)
