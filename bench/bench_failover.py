"""Benchmark: operator failover after SIGKILL of the active replica.

Two real operator processes on a fresh local control plane. Each round SIGKILLs the one
that acts, creates a new InferenceModel at once and times until the survivor has created
its Deployment (it reconciles) and until the model is Ready; the killed one is restarted
as the next standby. Lease election (``--leader-elect``) is measured for ``--rounds``
rounds; kopf's own peering (the baseline, a 60 s peer lifetime) for ``--peering-rounds``.

    .venv/bin/python bench/bench_failover.py                     # 5 Lease rounds, 1 peering round
    .venv/bin/python bench/bench_failover.py --rounds 3 --peering-rounds 0
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from deepserve.operator.dev.cluster import LocalCluster, Ports
from deepserve.operator.kube import Kube, KubeError

ROOT = Path(__file__).resolve().parents[1]
IM = "deepserve.io/v1alpha1"


def wait(check: Callable[[], Any], what: str, timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except KubeError:
            got = None
        if got:
            return got
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


class Operator:
    """One ``deepserve operator run`` child process, logging to a file."""

    def __init__(self, kubeconfig: str, namespace: str, log: Path, flags: list[str]) -> None:
        self.log_path = log
        cmd = [sys.executable, "-m", "deepserve.operator.cli", "operator", "run", "--kubeconfig", kubeconfig,
               "-n", namespace, "--resync-seconds", "10", *flags]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def model(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": IM, "kind": "InferenceModel", "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"uri": "builtin://tiny-llama"}}}


def ready(kube: Kube, namespace: str, name: str) -> bool:
    obj = kube.get(IM, "InferenceModel", name, namespace) or {}
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions", []))


def standing_by(op: Operator, mode: str) -> None:
    """Wait until a (re)started replica competes: a standby that started long ago, as in a
    cluster, has seen the leader renew; one that starts after the kill waits a full duration."""
    marker = "waiting to lead" if mode == "lease" else "deepserve operator starting"
    wait(lambda: marker in op.log(), "the replica standing by", 60)
    time.sleep(4)  # > one renewal (3 s) seen by it / kopf has seen its peer


def rounds(kube: Kube, kubeconfig: str, tmp: Path, mode: str, n: int) -> list[tuple[float, float]]:
    """(seconds to the survivor's first child, seconds to Ready) per round."""
    namespace = f"bench-failover-{mode}-{uuid.uuid4().hex[:5]}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    lease = f"{namespace}/deepserve-operator"
    priorities = iter(range(100, 1, -1))  # peering: each restarted standby ranks below the survivor

    def start(i: int) -> Operator:
        flags = (["--leader-elect", lease, "--lease-duration", "10", "--lease-renew", "3"] if mode == "lease"
                 else ["--peering", "deepserve", "--priority", str(next(priorities))])
        return Operator(kubeconfig, namespace, tmp / f"{namespace}-op{i}.log", flags)

    ops = [start(0), start(1)]
    for op in ops:
        standing_by(op, mode)
    out: list[tuple[float, float]] = []
    try:
        warm = "warm"
        kube.create(model(warm, namespace))
        wait(lambda: ready(kube, namespace, warm), "the first model Ready", 120)
        for r in range(n):
            active = ops[0]  # peering: the oldest survivor has the highest priority
            if mode == "lease":
                holder = (kube.get("coordination.k8s.io/v1", "Lease", "deepserve-operator", namespace) or {})
                who = str((holder.get("spec") or {}).get("holderIdentity", ""))
                active = next(op for op in ops if f"_{op.proc.pid}_" in who)
            active.kill()
            t0 = time.monotonic()
            name = f"r{r}"
            kube.create(model(name, namespace))
            wait(partial(kube.get, "apps/v1", "Deployment", f"{name}-main", namespace), "the survivor", 180)
            first = time.monotonic() - t0
            wait(partial(ready, kube, namespace, name), f"{name} Ready", 120)
            out.append((first, time.monotonic() - t0))
            print(f"  {mode} round {r + 1}: Deployment after {first:.2f}s, Ready after {out[-1][1]:.2f}s", flush=True)
            ops.remove(active)
            ops.append(start(len(out) + 1))
            standing_by(ops[-1], mode)
    finally:
        for op in ops:
            op.stop()
        kube.delete("v1", "Namespace", namespace)
    return out


def summary(label: str, values: list[float]) -> str:
    return (f"{label}: median {statistics.median(values):.2f}s, range {min(values):.2f}-{max(values):.2f}s "
            f"over {len(values)} round(s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="Lease-election rounds")
    ap.add_argument("--peering-rounds", type=int, default=1, help="kopf peering rounds (baseline; ~70 s each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ds-failover-") as tmp:
        local = LocalCluster(state_dir=Path(tmp) / "cluster", ports=Ports.free())
        local.start()
        kube = Kube.from_kubeconfig(str(local.kubeconfig))
        try:
            for path in sorted((ROOT / "crds").glob("*.yaml")):
                kube.apply(yaml.safe_load(path.read_text()), field_manager="bench")
            wait(lambda: kube.has_kind(IM, "InferenceModel"), "CRDs served", 60)
            lease = rounds(kube, str(local.kubeconfig), Path(tmp), "lease", args.rounds) if args.rounds else []
            peering = rounds(kube, str(local.kubeconfig), Path(tmp), "peering", args.peering_rounds) \
                if args.peering_rounds else []
        finally:
            kube.close()
            local.stop()
    if lease:
        print(summary("Lease election, SIGKILL -> survivor's first child", [a for a, _ in lease]))
        print(summary("Lease election, SIGKILL -> new model Ready", [b for _, b in lease]))
    if peering:
        print(summary("kopf peering (baseline), SIGKILL -> survivor's first child", [a for a, _ in peering]))
    if lease and peering:
        ratio = statistics.median(a for a, _ in lease) / statistics.median(a for a, _ in peering)
        print(f"Lease / peering failover time (medians): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
