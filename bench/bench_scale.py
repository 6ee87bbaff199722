"""Benchmark (#21.1): N InferenceModels over 5,000 simulated GPU nodes on the local control plane.

A fresh LocalCluster (etcd, kube-apiserver, controller-manager, scheduler, KWOK) gets
``--nodes`` KWOK GPU nodes in 22 pools (A100, H100, H200, L4, L40S, MI300X, Gaudi, CPU; GFD,
GKE, Karpenter and AMD labels; GPUNodePools with mixed prices), then N models in
``--namespaces`` namespaces (mixed sizes, some with 2-3 versions, most scaled to zero).

1. direct: every child object the operator would make for the N models (built by the same
   pure ``decide`` on the same pools) created with the same client and ``--workers`` threads;
2. operator: the operator (subprocess, all namespaces, autoscaler off by default) and the N
   models created the same way, until every model is ``Scheduled`` at its generation and every
   child exists.

Prints both times and their ratio (goal <= 1.5x), the operator's RSS (goal <= 600 MiB at
10,000 models), API requests per model by verb and resource from the API server's own
``apiserver_request_total`` (the bench's own requests and the background rate of a quiet
window subtracted) against the floor (the children's creates + 1 status write), the API
server's ``apiserver_request_duration_seconds`` per verb, and the CPU seconds each process
used in each phase (the API server on 2 cores is the limit when it uses ~2 cores).

    .venv/bin/python bench/bench_scale.py --models 2000          # ~10 min on 2 cores
    .venv/bin/python bench/bench_scale.py --models 1000 --nodes 1000 --no-direct --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from deepserve.operator.builders import Settings
from deepserve.operator.commands.operator import DEFAULT_METRICS_FROM, engine_policy
from deepserve.operator.controller.reconcile import decide
from deepserve.operator.kube import Kube, KubeError
from deepserve.operator.placement import discover_pools

ROOT = Path(__file__).resolve().parents[1]
IM = "deepserve.io/v1alpha1"
GFD = "nvidia.com/gpu.product"
GKE, KARPENTER = "cloud.google.com/gke-nodepool", "karpenter.sh/nodepool"

# name, pool label key, accelerator labels, GPU resource, GPUs per node, acceleratorId, USD/GPU-h, share of nodes
POOLS: list[tuple[str, str, dict[str, str], str, int, str, float, int]] = [
    ("a100-80-x8", GKE, {GFD: "NVIDIA-A100-SXM4-80GB", "cloud.google.com/gke-accelerator": "nvidia-a100-80gb"},
     "nvidia.com/gpu", 8, "nvidia-a100-sxm4-80gb", 1.80, 8),
    ("a100-80-spot-x8", GKE, {GFD: "NVIDIA-A100-SXM4-80GB"}, "nvidia.com/gpu", 8, "nvidia-a100-sxm4-80gb", 1.05, 6),
    ("a100-40-x8", KARPENTER, {GFD: "NVIDIA-A100-SXM4-40GB", "karpenter.k8s.aws/instance-gpu-name": "a100"},
     "nvidia.com/gpu", 8, "nvidia-a100-sxm4-40gb", 1.30, 6),
    ("a100-40-x4", GKE, {GFD: "NVIDIA-A100-SXM4-40GB"}, "nvidia.com/gpu", 4, "nvidia-a100-sxm4-40gb", 1.40, 4),
    ("a100-pcie-x2", KARPENTER, {GFD: "NVIDIA-A100-80GB-PCIe"}, "nvidia.com/gpu", 2, "nvidia-a100-pcie-80gb", 1.60, 3),
    ("h100-x8", KARPENTER, {GFD: "NVIDIA-H100-80GB-HBM3", "karpenter.k8s.aws/instance-gpu-name": "h100"},
     "nvidia.com/gpu", 8, "nvidia-h100-sxm5-80gb", 3.20, 8),
    ("h100-reserved-x8", GKE, {GFD: "NVIDIA-H100-80GB-HBM3"}, "nvidia.com/gpu", 8, "nvidia-h100-sxm5-80gb", 2.40, 6),
    ("h100-x4", GKE, {GFD: "NVIDIA-H100-80GB-HBM3"}, "nvidia.com/gpu", 4, "nvidia-h100-sxm5-80gb", 3.40, 4),
    ("h100-nvl-x2", KARPENTER, {GFD: "NVIDIA-H100-NVL"}, "nvidia.com/gpu", 2, "nvidia-h100-nvl-94gb", 2.90, 3),
    ("h200-x8", KARPENTER, {GFD: "NVIDIA-H200", "karpenter.k8s.aws/instance-gpu-name": "h200"},
     "nvidia.com/gpu", 8, "nvidia-h200-sxm-141gb", 3.90, 6),
    ("h200-gke-x8", GKE, {GFD: "NVIDIA-H200", "cloud.google.com/gke-accelerator": "nvidia-h200-141gb"},
     "nvidia.com/gpu", 8, "nvidia-h200-sxm-141gb", 3.60, 4),
    ("l4-x1", GKE, {GFD: "NVIDIA-L4", "cloud.google.com/gke-accelerator": "nvidia-l4"},
     "nvidia.com/gpu", 1, "nvidia-l4", 0.71, 10),
    ("l4-x4", GKE, {GFD: "NVIDIA-L4"}, "nvidia.com/gpu", 4, "nvidia-l4", 0.68, 5),
    ("l4-spot-x8", KARPENTER, {GFD: "NVIDIA-L4"}, "nvidia.com/gpu", 8, "nvidia-l4", 0.40, 4),
    ("l40s-x4", KARPENTER, {GFD: "NVIDIA-L40S"}, "nvidia.com/gpu", 4, "nvidia-l40s", 1.10, 4),
    ("mi300x-x8", KARPENTER, {"amd.com/gpu.product-name": "AMD_Instinct_MI300X"}, "amd.com/gpu", 8,
     "amd-instinct-mi300x", 2.50, 5),
    ("mi300x-x4", GKE, {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}, "amd.com/gpu", 4,
     "amd-instinct-mi300x", 2.70, 3),
    ("gaudi2-x8", KARPENTER, {"deepserve.io/accelerator": "intel-gaudi2"}, "habana.ai/gaudi", 8, "intel-gaudi2",
     1.50, 3),
    ("gaudi3-x8", GKE, {"deepserve.io/accelerator": "intel-gaudi3-oam"}, "habana.ai/gaudi", 8, "intel-gaudi3-oam",
     2.10, 2),
    ("cpu-general", GKE, {}, "", 0, "", 0.0, 3),
    ("cpu-highmem", KARPENTER, {}, "", 0, "", 0.0, 2),
    ("cpu-system", GKE, {}, "", 0, "", 0.0, 1),
]
SHAPES: list[dict[str, Any] | None] = [  # None: the built-in tiny model
    None,
    {"totalParams": 1_235_814_400, "layers": 16, "hiddenSize": 2048, "heads": 32, "kvHeads": 8,
     "vocabSize": 128256, "maxContext": 131072},
    {"totalParams": 8_030_261_248, "layers": 32, "hiddenSize": 4096, "heads": 32, "kvHeads": 8,
     "vocabSize": 128256, "maxContext": 131072},
    {"totalParams": 14_770_033_664, "layers": 48, "hiddenSize": 5120, "heads": 40, "kvHeads": 8,
     "vocabSize": 152064, "maxContext": 32768},
    {"totalParams": 32_763_876_352, "layers": 64, "hiddenSize": 5120, "heads": 40, "kvHeads": 8,
     "vocabSize": 152064, "maxContext": 32768},
    {"totalParams": 70_553_706_496, "layers": 80, "hiddenSize": 8192, "heads": 64, "kvHeads": 8,
     "vocabSize": 128256, "maxContext": 131072},
]
CHILD_KINDS = [("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"),
               ("networking.k8s.io/v1", "NetworkPolicy")]
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def build_nodes(total: int) -> list[dict[str, Any]]:
    """``total`` KWOK nodes over POOLS by share, with the labels of each pool's provisioner."""
    weight = sum(p[-1] for p in POOLS)
    counts = [max(1, total * p[-1] // weight) for p in POOLS]
    counts[0] += total - sum(counts)
    nodes = []
    for (name, pool_key, labels, resource, gpus, *_), count in zip(POOLS, counts, strict=True):
        for i in range(count):
            node = f"{name}-{i}"
            capacity = {"cpu": "96", "memory": "1024Gi", "pods": "110"} | ({resource: str(gpus)} if gpus else {})
            nodes.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node, "annotations": {"kwok.x-k8s.io/node": "fake"},
                             "labels": {"kubernetes.io/hostname": node, "type": "kwok", pool_key: name, **labels}
                             | ({"nvidia.com/gpu.count": str(gpus)} if GFD in labels else {})},
                "spec": {"taints": [{"key": resource, "value": "present", "effect": "NoSchedule"}] if gpus else []},
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            })
    return nodes


def gpu_node_pools() -> list[dict[str, Any]]:
    return [{"apiVersion": IM, "kind": "GPUNodePool", "metadata": {"name": name},
             "spec": {"nodeSelector": {key: name}, "acceleratorId": acc, "gpusPerNode": gpus,
                      "pricePerGpuHour": price, "currency": "USD"}}
            for name, key, _, _, gpus, acc, price, _ in POOLS if gpus]


def model_specs(n: int, seed: int, active_share: float) -> list[dict[str, Any]]:
    """N specs: sizes 139k..70B, 15% with 2 versions and 5% with 3, ``active_share`` at 1 replica."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shape = rng.choice(SHAPES)
        source: dict[str, Any] = ({"uri": "builtin://tiny-llama"} if shape is None
                                  else {"uri": "pvc://models/m", "format": "safetensors", "shape": shape})
        spec: dict[str, Any] = {"source": source,
                                "placement": {"strategy": rng.choice(["cost", "cost", "latency", "throughput"])},
                                "scaling": {"minReplicas": 1 if rng.random() < active_share else 0, "maxReplicas": 4}}
        r = rng.random()
        if r < 0.05:
            spec["versions"] = [{"name": "stable", "weight": 80}, {"name": "canary", "weight": 10},
                                {"name": "shadow", "weight": 10}]
        elif r < 0.20:
            spec["versions"] = [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}]
        out.append(spec)
    return out


@contextlib.contextmanager
def cluster(kubeconfig: str | None, lease_s: int) -> Iterator[tuple[str, Callable[[], dict[str, int]]]]:
    """The given cluster (no component pids), or a fresh local control plane for the run."""
    if kubeconfig:
        yield kubeconfig, dict
        return
    from deepserve.operator.dev.cluster import LocalCluster, Ports

    class ScaleCluster(LocalCluster):
        """KWOK renews 5,000 node leases every lease/4 s; the node controller waits as long."""

        def _kwok_args(self, *a: Any, **kw: Any) -> list[str]:
            args = super()._kwok_args(*a, **kw)  # type: ignore[misc]
            return [x if not x.startswith("--node-lease-duration-seconds") else
                    f"--node-lease-duration-seconds={lease_s}" for x in args]

        def _cm_args(self, *a: Any, **kw: Any) -> list[str]:
            return [*super()._cm_args(*a, **kw), f"--node-monitor-grace-period={lease_s}s"]  # type: ignore[misc]

    with tempfile.TemporaryDirectory(prefix="ds-scale-") as tmp:
        pools_file = Path(tmp) / "pools.yaml"
        pools_file.write_text(yaml.safe_dump({"pools": [{"name": "seed", "nodes": 1, "poolLabel": {GKE: "seed"}}]}))
        local = ScaleCluster(state_dir=Path(tmp) / "state", ports=Ports.free(), pools_file=pools_file)
        local.start()
        try:
            yield str(local.kubeconfig), local.running_pids
        finally:
            local.stop()


def plural(kind: str) -> str:
    low = kind.lower()
    return low[:-1] + "ies" if low.endswith("y") else low + "s"


class Client:
    """The bench's API client: counts its own requests by (verb, resource) to subtract them."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.sent: Counter[tuple[str, str]] = Counter()

    def create(self, obj: dict[str, Any]) -> None:
        self.sent[("POST", plural(obj["kind"]))] += 1
        try:
            self.kube.create(obj)
        except KubeError as e:
            if e.status != 409:
                raise

    def list(self, api_version: str, kind: str, label_selector: str = "") -> list[dict[str, Any]]:
        from deepserve.operator.kube import resource_path

        self.sent[("LIST", plural(kind))] += 1
        query = [("resourceVersion", "0")] + ([("labelSelector", label_selector)] if label_selector else [])
        return list(self.kube.request("GET", resource_path(api_version, kind, None), query=query,
                                      timeout=300).get("items", []))

    def metrics(self) -> str:
        self.sent[("GET", "")] += 1
        m, url, hdrs, _, _ = self.kube.api.param_serialize("GET", "/metrics", header_params={"Accept": "text/plain"},
                                                           auth_settings=["BearerToken"])
        return str(self.kube.api.call_api(m, url, header_params=hdrs, _request_timeout=60).read().decode())


SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.e+-]+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str) -> dict[str, Counter[tuple]]:
    """Request counts, duration sums and bucket counts by (verb, resource[, le]); process CPU."""
    out: dict[str, Counter[tuple]] = {"total": Counter(), "dur_sum": Counter(), "dur_count": Counter(),
                                      "bucket": Counter(), "cpu": Counter()}
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            out["cpu"][()] = float(line.split()[1])
            continue
        m = SAMPLE.match(line)
        if not m or not m.group(1).startswith("apiserver_request_"):
            continue
        name, labels, value = m.group(1), dict(LABEL.findall(m.group(2))), float(m.group(3))
        key = (labels.get("verb", ""), labels.get("resource", "") + (
            "/" + labels["subresource"] if labels.get("subresource") else ""))
        if name == "apiserver_request_total":
            out["total"][key] += value
        elif name == "apiserver_request_duration_seconds_sum":
            out["dur_sum"][key[:1]] += value
        elif name == "apiserver_request_duration_seconds_count":
            out["dur_count"][key[:1]] += value
        elif name == "apiserver_request_duration_seconds_bucket":
            out["bucket"][(key[0], labels["le"])] += value
    return out


def delta(a: dict[str, Counter[tuple]], b: dict[str, Counter[tuple]]) -> dict[str, Counter[tuple]]:
    return {k: Counter({x: b[k][x] - a[k].get(x, 0) for x in b[k]}) for k in b}


def quantile(buckets: Counter[tuple], verb: str, q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` of one verb's request durations."""
    rows = sorted(((float(le) if le != "+Inf" else float("inf")), c) for (v, le), c in buckets.items() if v == verb)
    total = rows[-1][1] if rows else 0
    return next((le for le, c in rows if c >= q * total), float("nan")) if total else float("nan")


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def parallel(fn: Callable[[Any], Any], items: list[Any], workers: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - t0


def expected_children(specs: list[dict[str, Any]], namespaces: list[str], nodes: list[dict[str, Any]],
                      pools: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """What the operator builds for each model: the pure ``decide`` on the same pools, no owner."""
    offers = discover_pools(nodes, [], pools).pools
    settings = Settings(engine_policy=engine_policy("on", "", DEFAULT_METRICS_FROM))  # the operator's defaults
    out = []
    for i, spec in enumerate(specs):
        model = {"metadata": {"name": f"m{i}", "namespace": namespaces[i % len(namespaces)],
                              "uid": f"00000000-0000-0000-0000-{i:012d}"}, "spec": spec}
        decision = decide(model, offers, settings)
        children = [dict(c, metadata={k: v for k, v in c["metadata"].items() if k != "ownerReferences"})
                    for c in decision.children]
        out.append(children)
    return out


def converged(client: Client, prefix: str, n: int) -> int:
    """Models in ``prefix`` namespaces that are Scheduled at their current generation."""
    done = 0
    for m in client.list(IM, "InferenceModel"):
        st = m.get("status") or {}
        md = m["metadata"]
        if not md["namespace"].startswith(prefix) or st.get("observedGeneration") != md.get("generation"):
            continue
        done += any(c.get("type") == "Scheduled" and c.get("status") == "True" for c in st.get("conditions") or [])
    return done


def children_by_kind(client: Client, prefix: str) -> Counter[str]:
    got: Counter[str] = Counter()
    for av, kind in CHILD_KINDS:
        got[kind] = sum(1 for o in client.list(av, kind, "deepserve.io/model")
                        if o["metadata"]["namespace"].startswith(prefix))
    return got


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", help="an existing cluster with the CRDs (default: a fresh local one)")
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--namespaces", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8, help="client threads (the operator runs 8 workers)")
    ap.add_argument("--active-share", type=float, default=0.0,
                    help="share of models at minReplicas 1 (their pods scheduled on KWOK nodes)")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct writes (CI smoke)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--node-lease-seconds", type=int, default=1200)
    ap.add_argument("--operator-args", default="--resync-seconds 600 --autoscale-tick 0",
                    help="more flags for `operator run` (default: no autoscaler; placement and children only)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    n = args.models
    result: dict[str, Any] = {"models": n, "nodes": args.nodes, "namespaces": args.namespaces}
    with cluster(args.kubeconfig, args.node_lease_seconds) as (kubeconfig, pids):
        kube = Kube.from_kubeconfig(kubeconfig)
        client = Client(kube)
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            kube.apply(yaml.safe_load(path.read_text()), field_manager="deepserve-bench")
        time.sleep(3)  # CRDs established
        nodes, pools = build_nodes(args.nodes), gpu_node_pools()
        t0 = time.perf_counter()
        parallel(client.create, pools + nodes, args.workers)
        while sum(1 for nd in client.list("v1", "Node") if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (nd.get("status") or {}).get("conditions") or [])) < len(nodes):
            time.sleep(2)
        print(f"{len(nodes)} nodes in {len(POOLS)} pools ({len(pools)} GPUNodePools) Ready after "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        ns_direct = [f"sd-{i:03d}" for i in range(args.namespaces)]
        ns_op = [f"so-{i:03d}" for i in range(args.namespaces)]
        parallel(client.create, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": x}}
                                 for x in ns_direct + ns_op], args.workers)
        specs = model_specs(n, 21, args.active_share)
        want = expected_children(specs, ns_op, nodes, pools)
        want_kinds = Counter(c["kind"] for cs in want for c in cs)
        result["children_per_model"] = sum(want_kinds.values()) / n
        unplaced = sum(1 for cs in want if not cs)
        print(f"{n} models: {dict(want_kinds)} children ({result['children_per_model']:.2f} per model); "
              f"{unplaced} the planner places nowhere", flush=True)

        def phase_start() -> tuple[dict[str, Counter[tuple]], dict[str, float], Counter[tuple[str, str]], float]:
            return parse_metrics(client.metrics()), cpu_seconds(pids()), Counter(client.sent), time.perf_counter()

        # background: what the control plane sends with nobody working (KWOK leases, controllers)
        m0, _, sent0, t0 = phase_start()
        time.sleep(20)
        m1, _, sent1, t1 = phase_start()
        background = {k: v / (t1 - t0) for k, v in (delta(m0, m1)["total"] - Counter(
            {k: v for k, v in (sent1 - sent0).items()})).items() if v > 0}
        result["background_requests_per_s"] = round(sum(background.values()), 1)
        print(f"background: {result['background_requests_per_s']} requests/s "
              f"({', '.join(f'{v} {r} {x:.1f}/s' for (v, r), x in sorted(background.items(), key=lambda kv: -kv[1])[:4])})")

        if not args.no_direct:
            direct = [dict(c, metadata=dict(c["metadata"], namespace=c["metadata"]["namespace"].replace("so-", "sd-")))
                      for cs in want for c in cs]
            m0, c0, _, _ = phase_start()
            direct_s = parallel(client.create, direct, args.workers)
            m1, c1, _, _ = phase_start()
            result["direct_s"] = direct_s
            result["direct_cpu"] = {k: round(c1.get(k, 0) - v, 1) for k, v in c0.items()}
            d = delta(m0, m1)
            result["direct_apiserver_cpu_s"] = round(d["cpu"][()], 1)
            print(f"direct: {len(direct)} child objects in {direct_s:.1f} s ({len(direct) / direct_s:.0f}/s, "
                  f"{args.workers} threads); CPU s: {result['direct_cpu']}", flush=True)

        log = Path(tempfile.mkstemp(prefix="ds-scale-operator-", suffix=".log")[1])
        with log.open("wb") as out:
            op = subprocess.Popen([sys.executable, "-m", "deepserve.operator.cli", "operator", "run", "--kubeconfig",
                                   kubeconfig, "--standalone", *args.operator_args.split()],
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(10)  # watching; its indexes hold the nodes
            idle_rss, _ = rss_mib(op.pid)
            models = [{"apiVersion": IM, "kind": "InferenceModel",
                       "metadata": {"name": f"m{i}", "namespace": ns_op[i % len(ns_op)]}, "spec": spec}
                      for i, spec in enumerate(specs)]
            m0, c0, sent0, t0 = phase_start()
            c0["operator"] = cpu_seconds({"operator": op.pid})["operator"]
            create_s = parallel(client.create, models, args.workers)
            poll = max(3.0, n / 1000)
            done = got = 0
            while time.perf_counter() - t0 < args.timeout:
                done = converged(client, "so-", n)
                if done >= n - unplaced:
                    got_kinds = children_by_kind(client, "so-")
                    got = sum(got_kinds.values())
                    if all(got_kinds[k] >= v for k, v in want_kinds.items()):
                        break
                    print(f"  {time.perf_counter() - t0:.0f} s: {done} Scheduled, children {dict(got_kinds)}", flush=True)
                else:
                    print(f"  {time.perf_counter() - t0:.0f} s: {done}/{n - unplaced} Scheduled", flush=True)
                if op.poll() is not None:
                    raise SystemExit(f"operator exited {op.returncode}; log {log}")
                time.sleep(poll)
            total_s = time.perf_counter() - t0
            m1, c1, sent1, t1 = phase_start()
            c1["operator"] = cpu_seconds({"operator": op.pid})["operator"]
            rss, peak = rss_mib(op.pid)
            time.sleep(20)
            settled, _ = rss_mib(op.pid)
        finally:
            op.terminate()
            try:
                op.wait(30)
            except subprocess.TimeoutExpired:
                op.kill()
        d = delta(m0, m1)
        ours = sent1 - sent0
        counted = Counter({k: v - background.get(k, 0) * (t1 - t0) - ours.get(k, 0) for k, v in d["total"].items()})
        operator_requests = Counter({k: round(v) for k, v in counted.items()
                                     if v >= 0.5 and k[1] not in ("leases", "nodes", "")})
        per_model = sum(operator_requests.values()) / n
        floor = result["children_per_model"] + 1  # the children's creates (applies) + one status write
        result.update(
            operator_s=total_s, create_models_s=create_s, scheduled=done, unplaced=unplaced,
            children=got, children_wanted=sum(want_kinds.values()), operator_log=str(log),
            rss_idle_mib=idle_rss, rss_mib=rss, rss_peak_mib=peak, rss_settled_mib=settled,
            requests_per_model=per_model, floor_per_model=floor,
            requests_by_kind={f"{v} {r}": c for (v, r), c in operator_requests.most_common(14)},
            operator_cpu={k: round(c1.get(k, 0) - v, 1) for k, v in c0.items()},
            apiserver_cpu_s=round(d["cpu"][()], 1),
            duration_by_verb={v: {"mean_ms": round(1e3 * d["dur_sum"][(v,)] / c, 1),
                                  "p50_le_s": quantile(d["bucket"], v, 0.5), "p99_le_s": quantile(d["bucket"], v, 0.99),
                                  "count": int(c)}
                              for (v,), c in d["dur_count"].items() if c >= 50})
        print(f"operator: {n} models created in {create_s:.1f} s; {done}/{n - unplaced} Scheduled and "
              f"{got}/{sum(want_kinds.values())} children after {total_s:.1f} s")
        if "direct_s" in result:
            result["ratio"] = total_s / result["direct_s"]
            print(f"ratio operator/direct: {result['ratio']:.2f}x (goal <= 1.5x)")
        print(f"operator RSS: idle {idle_rss:.0f} MiB, at {n} models {rss:.0f} MiB (peak {peak:.0f}, "
              f"{settled:.0f} 20 s later; goal <= 600 MiB at 10,000)")
        print(f"API requests per model: {per_model:.2f} sent by the operator, floor {floor:.2f} "
              f"(children + 1 status write); by verb/resource: {result['requests_by_kind']}")
        print(f"CPU seconds in the operator phase ({total_s:.0f} s wall, 2 cores = {2 * total_s:.0f} CPU s): "
              f"{result['operator_cpu']}")
        print("apiserver_request_duration_seconds (operator phase): " + "; ".join(
            f"{v} n={x['count']} mean {x['mean_ms']} ms p50<={x['p50_le_s']} s p99<={x['p99_le_s']} s"
            for v, x in sorted(result["duration_by_verb"].items())))
        print(f"operator log: {log}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        kube.close()
    return result


if __name__ == "__main__":
    main()
