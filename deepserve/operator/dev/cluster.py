"""A real local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK as child processes with their own data directory.

Used by ``deepserve dev up|down|status``, the demo and the test suite. Simulated GPU nodes
come from a declarative pools file (see ``simulated-pools.yaml``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deepserve.operator.dev import toolchain as tools
from deepserve.operator.dev.nodes import build_nodes, load_pools_file
from deepserve.operator.dev.pki import Pki, create_pki, write_kubeconfig

log = logging.getLogger(__name__)

STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")
DEFAULT_POOLS_FILE = Path(__file__).with_name("simulated-pools.yaml")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or stopped."""


@dataclass(frozen=True)
class Ports:
    """Loopback ports of each component."""

    apiserver: int = 16443
    etcd_client: int = 12379
    etcd_peer: int = 12380
    controller_manager: int = 16257
    scheduler: int = 16259
    kwok: int = 16280

    @classmethod
    def free(cls) -> Ports:
        """Pick free loopback ports (for tests that must not clash with a dev cluster)."""
        socks = []
        for _ in range(6):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        ports = [s.getsockname()[1] for s in socks]
        for s in socks:
            s.close()
        return cls(*ports)


def default_state_dir() -> Path:
    """Where ``deepserve dev`` keeps data, logs and kubeconfigs (DEEPSERVE_HOME overrides)."""
    home = os.environ.get("DEEPSERVE_HOME")
    base = Path(home) if home else Path.home() / ".local" / "share" / "deepserve"
    return base / "clusters" / "default"


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists"; check its state
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class LocalCluster:
    """Start, inspect and stop the local control plane in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path | None = None,
        ports: Ports | None = None,
        pools_file: Path | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir())
        self.pools_file = Path(pools_file or DEFAULT_POOLS_FILE)
        self._say = say or log.info
        state = self._read_state()
        self.ports = ports or (Ports(**state["ports"]) if state else Ports())

    # ---- paths -------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters)."""
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._state_file.read_text()))
        except (OSError, ValueError):
            return None

    # ---- lifecycle ---------------------------------------------------------
    def running_pids(self) -> dict[str, int]:
        """Components recorded as started whose process is still alive."""
        state = self._read_state() or {}
        return {n: p for n, p in state.get("pids", {}).items() if _alive(p)}

    def start(self, timeout: float = 120.0) -> None:
        """Start every component, create the simulated nodes and wait until healthy.

        Raises ClusterError (after stopping whatever it started) on any failure.
        """
        if self.running_pids():
            if self.healthy():
                self._say(f"cluster already running (kubeconfig {self.kubeconfig})")
                return
            raise ClusterError(
                f"a cluster in {self.state_dir} is partly running; run `deepserve dev down` first"
            )
        tc = tools.resolve()
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
            tc.path(name)  # raises a clear error when missing
        for comp, port in asdict(self.ports).items():
            if _port_in_use(port):
                raise ClusterError(
                    f"port {port} ({comp}) on 127.0.0.1 is already in use; stop what holds it or "
                    "choose other ports (DEEPSERVE_DEV_PORT_BASE)"
                )
        pools = load_pools_file(self.pools_file)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        pki = create_pki(self.state_dir / "pki")
        pids: dict[str, int] = {}
        t0 = time.monotonic()
        try:
            pids["etcd"] = self._spawn("etcd", self._etcd_args(tc))
            self._save(pids)
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.ports.etcd_client}/health"),
                       "etcd health", timeout, pids)
            pids["kube-apiserver"] = self._spawn("kube-apiserver", self._apiserver_args(tc, pki))
            self._save(pids)
            write_kubeconfig(self.kubeconfig, self.server, pki, "admin")
            self._wait(lambda: self._api_ok("/readyz"), "kube-apiserver /readyz", timeout, pids)
            for comp in ("controller-manager", "scheduler", "kwok"):
                write_kubeconfig(self.state_dir / f"{comp}.kubeconfig", self.server, pki,
                                 comp if comp != "kwok" else "kwok")
            pids["kube-controller-manager"] = self._spawn(
                "kube-controller-manager", self._cm_args(tc, pki))
            pids["kube-scheduler"] = self._spawn("kube-scheduler", self._scheduler_args(tc))
            pids["kwok"] = self._spawn("kwok", self._kwok_args(tc))
            self._save(pids)
            for node in build_nodes(pools):
                self.api("POST", "/api/v1/nodes", node, ok_conflict=True)
            self._wait(self._nodes_ready, "simulated nodes Ready", timeout, pids)
            self._wait(lambda: self._api_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                       "default service account", timeout, pids)
        except BaseException:
            self._say("start failed; stopping what was started (logs in " f"{self.logs_dir})")
            self._stop_pids(pids)
            self._save({})
            raise
        self._say(f"cluster up in {time.monotonic() - t0:.1f}s; KUBECONFIG={self.kubeconfig}")

    def stop(self, timeout: float = 20.0) -> list[str]:
        """Stop every recorded component (SIGTERM, then SIGKILL). Returns the names stopped."""
        state = self._read_state() or {}
        pids = state.get("pids", {})
        stopped = self._stop_pids(pids, timeout)
        self._save({})
        return stopped

    def destroy(self) -> None:
        """Stop and delete all data."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def healthy(self) -> bool:
        """True when the API server answers /readyz."""
        return self._api_ok("/readyz")

    def status(self) -> dict[str, Any]:
        """A summary for people: components alive, API health, nodes."""
        alive = self.running_pids()
        out: dict[str, Any] = {
            "stateDir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "components": {c: ("running" if c in alive else "stopped") for c in COMPONENTS},
            "healthy": bool(alive) and self.healthy(),
        }
        if out["healthy"]:
            nodes = self.api("GET", "/api/v1/nodes")["items"]
            out["nodes"] = len(nodes)
            out["readyNodes"] = sum(1 for n in nodes if _node_ready(n))
            gpus = sum(int(n["status"].get("capacity", {}).get("nvidia.com/gpu", 0)) for n in nodes)
            out["gpus"] = gpus
        return out

    def memory_rss_mib(self) -> dict[str, float]:
        """Resident memory of each running component in MiB (from /proc)."""
        out = {}
        for name, pid in self.running_pids().items():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1]) / 1024
        return out

    # ---- REST --------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        pki = self.state_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def api(self, method: str, path: str, body: dict[str, Any] | None = None,
            ok_conflict: bool = False) -> Any:
        """Call the API server as admin and return the decoded JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if ok_conflict and e.code == 409:
                return None
            raise ClusterError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from e

    def _api_ok(self, path: str) -> bool:
        try:
            req = urllib.request.Request(self.server + path)
            with urllib.request.urlopen(req, context=self._ssl(), timeout=3) as r:
                return bool(r.status == 200)
        except (OSError, ssl.SSLError, urllib.error.URLError):
            return False

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _nodes_ready(self) -> bool:
        try:
            nodes = self.api("GET", "/api/v1/nodes")["items"]
        except ClusterError:
            return False
        return bool(nodes) and all(_node_ready(n) for n in nodes)

    # ---- processes ---------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> int:
        logf = open(self.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.state_dir,
        )
        logf.close()
        self._say(f"started {name} (pid {proc.pid})")
        return proc.pid

    def _wait(self, check: Callable[[], bool], what: str, timeout: float,
              pids: dict[str, int]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for name, pid in pids.items():
                if not _alive(pid):
                    tail = _tail(self.logs_dir / f"{name}.log")
                    raise ClusterError(f"{name} exited while waiting for {what}:\n{tail}")
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.logs_dir}")

    def _save(self, pids: dict[str, int]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"ports": asdict(self.ports), "pids": pids}))

    def _stop_pids(self, pids: dict[str, int], timeout: float = 20.0) -> list[str]:
        # reverse start order: kwok and controllers first, etcd last
        order = [c for c in reversed(COMPONENTS) if c in pids]
        stopped = []
        for name in order:
            pid = pids[name]
            if not _alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            stopped.append(name)
        return stopped

    # ---- component flags ---------------------------------------------------
    def _etcd_args(self, tc: tools.Toolchain) -> list[str]:
        p = self.ports
        return [
            tc.path("etcd"), "--name=deepserve", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-cluster=deepserve=http://127.0.0.1:{p.etcd_peer}",
            "--unsafe-no-fsync=true", "--quota-backend-bytes=4294967296", "--log-level=warn",
        ]

    def _apiserver_args(self, tc: tools.Toolchain, pki: Pki) -> list[str]:
        p = self.ports
        return [
            tc.path("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{p.etcd_client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={p.apiserver}", f"--cert-dir={self.state_dir / 'certs'}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/16", "--allow-privileged=true",
            "--endpoint-reconciler-type=none", "--profiling=false",
            "--max-requests-inflight=1000", "--max-mutating-requests-inflight=500",
            "--v=0",
        ]

    def _cm_args(self, tc: tools.Toolchain, pki: Pki) -> list[str]:
        return [
            tc.path("kube-controller-manager"),
            f"--kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports.controller_manager}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}", f"--cluster-signing-key-file={pki.ca_key}",
            "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
            "--concurrent-gc-syncs=20", "--kube-api-qps=200", "--kube-api-burst=400",
            "--v=0",
        ]

    def _scheduler_args(self, tc: tools.Toolchain) -> list[str]:
        return [
            tc.path("kube-scheduler"),
            f"--kubeconfig={self.state_dir / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports.scheduler}",
            "--leader-elect=false", "--kube-api-qps=200", "--kube-api-burst=400", "--v=0",
        ]

    def _kwok_args(self, tc: tools.Toolchain) -> list[str]:
        return [
            tc.path("kwok"), f"--kubeconfig={self.state_dir / 'kwok.kubeconfig'}",
            f"--config={STAGES_FILE}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=127.200.0.0/16", "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
            "--node-lease-duration-seconds=40",
        ]


def _node_ready(node: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
