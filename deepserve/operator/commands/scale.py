"""``deepserve scale``: status of a model's scaling (versions side by side), set replicas.

Holding requests for a model scaled to zero (and asking for its scale-up) is the gateway's
hold-and-wake: ``deepserve gateway run --namespace NS`` (it replaced ``scale activator``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from deepserve.operator.kube import Kube, KubeError


def register(sub: Any) -> None:
    """Add the ``scale`` command group."""
    p = sub.add_parser("scale", help="serverless scaling: status per version, set replicas")
    ops = p.add_subparsers(dest="scale_cmd", metavar="ACTION", required=True)

    st = ops.add_parser("status", help="who owns scaling, and versions side by side (replicas, rps, latency, "
                                       "tokens/s, usage)")
    st.add_argument("model")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between the two metric scrapes")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    _common(st)
    st.set_defaults(func=cmd_status)

    s = ops.add_parser("set", help="set replicas through the scale subresource (a manual edit: the "
                                   "autoscaler defers for its hold period)")
    s.add_argument("model")
    s.add_argument("replicas", type=int)
    _common(s)
    s.set_defaults(func=cmd_set)



def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")


def cmd_status(args: argparse.Namespace) -> int:
    """Print the scaling owner and decision, and a per-version table."""
    from deepserve.operator.autoscaler.io import API_VERSION, MetricsSampler, model_pods
    from deepserve.operator.autoscaler.report import format_table, version_figures
    from deepserve.operator.metering.scrape import MetricsSample, scrape_many

    kube = Kube.from_kubeconfig(args.kubeconfig)
    try:
        model = kube.get(API_VERSION, "InferenceModel", args.model, args.namespace)
        if model is None:
            print(f"InferenceModel {args.namespace}/{args.model} not found")
            return 1
        pods = model_pods(kube, args.namespace, args.model)
        last: dict[str, MetricsSample] = {}

        def scrape(urls: list[str]) -> dict[str, Any]:
            got = scrape_many(urls, timeout=2.0)
            for p in pods:
                sample = got.get(p.metrics_url)
                if isinstance(sample, MetricsSample):
                    last[p.uid] = sample
            return got

        sampler = MetricsSampler(scrape)
        start = time.monotonic()
        sampler.sample(pods, start)
        time.sleep(max(0.2, args.interval))
        loads = sampler.sample(pods, time.monotonic())
        rows = version_figures(model, pods, loads, last)
    finally:
        kube.close()
    scaling = (model.get("status") or {}).get("scaling") or {}
    if args.json:
        print(json.dumps({"scaling": scaling, "versions": [r.__dict__ for r in rows]}, indent=2))
        return 0
    spec_scaling = (model.get("spec") or {}).get("scaling") or {}
    print(f"model {args.namespace}/{args.model}: replicas {spec_scaling.get('replicas', '-')} "
          f"(min {spec_scaling.get('minReplicas', 1)}, max {spec_scaling.get('maxReplicas', '-')})")
    print(f"owner: {scaling.get('owner', 'unknown')} ({scaling.get('ownerReason', 'no status.scaling yet')})")
    if scaling.get("mode"):
        print(f"decision: {scaling.get('desiredReplicas')} [{scaling['mode']}] {scaling.get('reason', '')}")
    if scaling.get("capacity"):
        print(f"capacity: {scaling['capacity']}")
    print(format_table(rows))
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    """Write replicas through the scale subresource."""
    from deepserve.operator.autoscaler.io import write_scale

    kube = Kube.from_kubeconfig(args.kubeconfig)
    try:
        write_scale(kube, args.namespace, args.model, args.replicas, manager="deepserve-cli")
    except KubeError as e:
        print(f"scale failed: {e}")
        return 1
    finally:
        kube.close()
    print(f"{args.namespace}/{args.model}: replicas set to {args.replicas}")
    return 0
