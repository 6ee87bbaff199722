"""Benchmark: N InferenceModels through the operator vs the same children created directly.

Prints: time to create N models and until every child exists and every status is written;
time to create the same child objects directly with the same client and concurrency (the
API server's own limit); the operator's resident memory at N models.

    .venv/bin/python bench/bench_operator.py --models 1000            # starts a local cluster
    .venv/bin/python bench/bench_operator.py --kubeconfig K --models 200
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import (
    BuildContext,
    ChosenPlacement,
    ModelRef,
    Settings,
    build_children,
)
from deepserve.operator.kube import Kube, KubeError

ROOT = Path(__file__).resolve().parents[1]
IM = "deepserve.io/v1alpha1"
SPEC: dict[str, Any] = {"source": {"uri": "builtin://tiny-llama"}, "scaling": {"minReplicas": 0}}


@contextlib.contextmanager
def cluster(kubeconfig: str | None) -> Iterator[str]:
    """The given cluster, or a fresh local control plane for the run."""
    if kubeconfig:
        yield kubeconfig
        return
    from deepserve.operator.dev.cluster import LocalCluster, Ports

    class WideServiceRange(LocalCluster):
        """Room for 2 Services per model: the dev cluster's /24 holds only 254 ClusterIPs."""

        def _apiserver_args(self, *a: Any, **kw: Any) -> list[str]:
            args = super()._apiserver_args(*a, **kw)  # type: ignore[misc]
            return [x.replace("10.0.0.0/24", "10.0.0.0/16") for x in args]

    with tempfile.TemporaryDirectory(prefix="ds-bench-") as tmp:
        local = WideServiceRange(state_dir=Path(tmp), ports=Ports.free())
        local.start()
        try:
            yield str(local.kubeconfig)
        finally:
            local.stop()


def timed_parallel(fn: Callable[[Any], Any], items: list[Any], workers: int) -> float:
    """Run ``fn`` over ``items`` on ``workers`` threads; seconds taken."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - t0


def install_crds(kube: Kube) -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        kube.apply(yaml.safe_load(path.read_text()), field_manager="deepserve-bench")
    time.sleep(2)  # established


def namespace(kube: Kube, name: str) -> None:
    with contextlib.suppress(KubeError):
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def direct_children(ns: str, n: int) -> list[dict[str, Any]]:
    spec = InferenceModelSpec.from_dict(SPEC)
    placement = ChosenPlacement("l4", "nvidia-l4", 1, 1, "bf16", {"cloud.google.com/gke-nodepool": "l4"})
    out = []
    for i in range(n):
        ctx = BuildContext(ModelRef(f"m{i}", ns, f"00000000-0000-0000-0000-{i:012d}"), spec, placement,
                           Settings(), {"main": 0})
        for obj in build_children(ctx):
            obj["metadata"].pop("ownerReferences")  # no owner exists in this namespace
            out.append(obj)
    return out


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def converged(kube: Kube, ns: str, n: int) -> tuple[int, int, int]:
    models = kube.list(IM, "InferenceModel", ns)
    written = sum(1 for m in models if (m.get("status") or {}).get("observedGeneration") == 1)
    counts = [len(kube.list(av, k, ns, label_selector="deepserve.io/model"))
              for av, k in (("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"),
                            ("policy/v1", "PodDisruptionBudget"))]
    return written, sum(counts), n * 5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig")
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8, help="client threads (the operator runs 8 workers)")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--resync-seconds", type=float, default=600, help="operator's periodic resync")
    ap.add_argument("--operator-args", default="", help="more flags for `deepserve operator run` (one string)")
    args = ap.parse_args()
    n = args.models
    with cluster(args.kubeconfig) as kubeconfig:
        kube = Kube.from_kubeconfig(kubeconfig)
        install_crds(kube)
        suffix = str(int(time.time()))[-6:]
        ns_direct, ns_op = f"bench-direct-{suffix}", f"bench-op-{suffix}"
        namespace(kube, ns_direct)
        namespace(kube, ns_op)

        objs = direct_children(ns_direct, n)
        direct_s = timed_parallel(kube.create, objs, args.workers)
        print(f"direct: created {len(objs)} child objects in {direct_s:.1f} s "
              f"({len(objs) / direct_s:.0f} objects/s, {args.workers} client threads)")

        log = Path(tempfile.mkstemp(prefix="ds-bench-operator-", suffix=".log")[1])
        with log.open("wb") as out:
            op = subprocess.Popen([sys.executable, "-m", "deepserve.operator.cli", "operator", "run",
                                   "--kubeconfig", kubeconfig, "-n", ns_op, "--standalone",
                                   "--resync-seconds", str(args.resync_seconds), *shlex.split(args.operator_args)],
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(5)  # operator started and watching
            idle_rss, _ = rss_mib(op.pid)
            models = [{"apiVersion": IM, "kind": "InferenceModel", "metadata": {"name": f"m{i}", "namespace": ns_op},
                       "spec": SPEC} for i in range(n)]
            t0 = time.perf_counter()
            create_s = timed_parallel(kube.create, models, args.workers)
            while True:
                written, children, want = converged(kube, ns_op, n)
                if (written == n and children == want) or time.perf_counter() - t0 > args.timeout:
                    break
                time.sleep(1)
            total_s = time.perf_counter() - t0
            rss, peak = rss_mib(op.pid)
            time.sleep(20)  # after the storm: what the operator keeps
            settled, _ = rss_mib(op.pid)
        finally:
            op.terminate()
            try:
                op.wait(30)
            except subprocess.TimeoutExpired:
                op.kill()
        print(f"operator: created {n} InferenceModels in {create_s:.1f} s; all {want} children and {n} "
              f"statuses written after {total_s:.1f} s ({written}/{n} statuses, {children}/{want} children)")
        print(f"ratio operator/direct: {total_s / direct_s:.2f}x (goal <= 2x)")
        print(f"operator memory: idle {idle_rss:.0f} MiB, at {n} models {rss:.0f} MiB (peak {peak:.0f} MiB, "
              f"{settled:.0f} MiB 20 s later; goal < 200 MB)")
        print(f"operator log: {log}")
        kube.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
