"""``deepserve operator``: run the kopf operator, regenerate/check the CRDs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[3]
PEERING_NAME = "deepserve"
DEFAULT_METRICS_FROM = "*/app.kubernetes.io/name=prometheus"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def register(sub: Any) -> None:
    """Add the ``operator`` command group."""
    p = sub.add_parser("operator", help="the InferenceModel operator (kopf) and its CRDs")
    ops = p.add_subparsers(dest="operator_cmd", metavar="ACTION", required=True)

    run = ops.add_parser("run", help="run the operator against a cluster")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only these namespaces (repeatable; default: all)")
    run.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    run.add_argument("--peering", default=PEERING_NAME, help="ClusterKopfPeering name shared by replicas")
    run.add_argument("--priority", type=int, default=None,
                     help="peering priority; the highest live replica acts, others pause (default: random)")
    run.add_argument("--leader-elect", default="", metavar="NAMESPACE/NAME",
                     help="one active replica, elected with this coordination.k8s.io Lease instead of kopf "
                          "peering; a crashed leader is replaced in about --lease-duration (docs/faults.md)")
    run.add_argument("--lease-duration", type=_seconds, default=10.0, metavar="SECONDS",
                     help="with --leader-elect: how long a Lease not renewed stays the holder's")
    run.add_argument("--lease-renew", type=_seconds, default=3.0, metavar="SECONDS",
                     help="with --leader-elect: how often the leader renews the Lease")
    run.add_argument("--shards", type=_shard_count, default=0, metavar="S",
                     help="with --leader-elect NAMESPACE/NAME: every replica acts, each on the models of the "
                          "shards it holds (S Leases NAME-shard-<i>, objects hashed by namespace/name; "
                          "docs/operator.md); 0: one leader")
    run.add_argument("--health-address", default="", metavar="HOST:PORT",
                     help="serve /healthz and /readyz here in every role, a standby's too (docs/chart.md)")
    run.add_argument("--engine-image", default="ghcr.io/deepserve/engine:latest",
                     help="default Triton + deepserve engine image")
    run.add_argument("--usage-endpoint", default="", help="URL engines ship usage events to")
    run.add_argument("--ingest-key-file", default="", metavar="PATH",
                     help="the ingest key (a mounted Secret, re-read on change): each model gets a Secret with "
                          "its own usage write credential, mounted read-only into its engine pods")
    run.add_argument("--gateway", default="", help="NAMESPACE/NAME of the Gateway HTTPRoutes attach to")
    run.add_argument("--gateway-api", choices=["auto", "on", "off"], default="auto",
                     help="build HTTPRoutes (auto: when the Gateway API CRDs are installed)")
    run.add_argument("--resync-seconds", type=float, default=60.0, help="periodic reconcile interval (0: only on watch events)")
    run.add_argument("--engine-runner", default="", metavar="NAME",
                     help="(dev only) label engine pods deepserve.io/runner=NAME for a local runner")
    run.add_argument("--autoscale-tick", type=_seconds, default=2.0, metavar="SECONDS",
                     help="autoscaler tick per InferenceModel (0: no autoscaler; see docs/autoscaling.md)")
    run.add_argument("--manual-hold", type=_seconds, default=600.0, metavar="SECONDS",
                     help="after a manual edit of replicas (kubectl scale), leave the count alone this long")
    run.add_argument("--allow-pool-move", action="store_true",
                     help="when the planned pool is full, move the model to the planner's next pool that fits "
                          "(named in status.scaling.suggestedPool)")
    run.add_argument("--activator", action="append", default=[], metavar="NAMESPACE=URL",
                     help="the activator serving NAMESPACE and its /metrics URL (repeatable): requests it "
                          "holds count as demand, and a model never scales to zero while any are held")
    run.add_argument("--liveness", default="", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--engine-network-policy", choices=["on", "off"], default="on",
                     help="give each model's engine pods a NetworkPolicy admitting only the gateway, the operator "
                          "and metrics scrapers")
    run.add_argument("--release-namespace", default="", metavar="NAMESPACE",
                     help="namespace of the gateway and operator pods the policy admits (default: the "
                          "operator's own, from its service account; else deepserve)")
    run.add_argument("--metrics-from", default=DEFAULT_METRICS_FROM, metavar="NAMESPACE/KEY=VALUE",
                     help="pods that may scrape engine metrics: a namespace ('*' for any) and a pod label "
                          f"(default {DEFAULT_METRICS_FROM})")
    run.set_defaults(func=_run)

    gen = ops.add_parser("gen-crds", help="write crds/ (and charts/deepserve/crds/) from the schema")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 when files differ")
    gen.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    gen.set_defaults(func=_gen_crds)


def _seconds(value: str) -> float:
    """argparse type: a non-negative number of seconds."""
    try:
        out = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not out >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {value}")
    return out


def _shard_count(value: str) -> int:
    """argparse type: 0 (no sharding) or 1..1024 shards."""
    from deepserve.operator.sharding import MAX_SHARDS

    if not value.isdigit() or int(value) > MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"expected 0..{MAX_SHARDS}, got {value!r}")
    return int(value)


def _gen_crds(args: argparse.Namespace) -> int:
    from deepserve.operator.api.crds import sync_crds

    targets = [args.root / "crds"]
    chart = args.root / "charts" / "deepserve"
    if chart.is_dir():
        targets.append(chart / "crds")
    drift = [p for t in targets for p in sync_crds(t, check=args.check)]
    if args.check:
        if drift:
            print("CRDs differ from the schema (run `deepserve operator gen-crds`):", *drift, sep="\n  ")
            return 1
        print("CRDs are up to date")
        return 0
    print(f"wrote {len(drift)} file(s)" + "".join(f"\n  {p}" for p in drift))
    return 0


def _ensure_peering(kubeconfig: str | None, name: str, namespaces: list[str]) -> None:
    """Create the peering object(s); kopf silently runs standalone when they are missing."""
    from deepserve.operator.kube import Kube, KubeError

    kube = Kube.from_kubeconfig(kubeconfig)
    wanted: list[tuple[str, str | None]] = [("KopfPeering", ns) for ns in namespaces]
    wanted = wanted or [("ClusterKopfPeering", None)]
    try:
        for kind, ns in wanted:
            if kube.get("kopf.dev/v1", kind, name, ns) is None:
                try:
                    kube.create({"apiVersion": "kopf.dev/v1", "kind": kind,
                                 "metadata": {"name": name, **({"namespace": ns} if ns else {})}})
                except KubeError as e:
                    if e.status != 409:  # another replica created it first
                        raise
    finally:
        kube.close()


def _gateway_api(kubeconfig: str | None, mode: str) -> bool:
    if mode != "auto":
        return mode == "on"
    from deepserve.operator.kube import Kube

    kube = Kube.from_kubeconfig(kubeconfig)
    try:
        return kube.has_kind("gateway.networking.k8s.io/v1", "HTTPRoute")
    finally:
        kube.close()


def _leaderworkerset_api(kubeconfig: str | None) -> bool:
    """Whether the LeaderWorkerSet API is served (multi-node replicas; checked at start)."""
    from deepserve.operator.kube import Kube

    kube = Kube.from_kubeconfig(kubeconfig)
    try:
        return kube.has_kind("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    finally:
        kube.close()


def _limit_malloc_arenas() -> None:
    """Cap glibc malloc arenas: with many worker threads, per-thread arenas keep freed
    memory and the resident size grows far beyond what Python holds."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).mallopt(-8, 2)  # M_ARENA_MAX = -8


def _activators(items: list[str]) -> dict[str, str]:
    """``--activator NAMESPACE=URL`` flags as a mapping; exits naming a malformed one."""
    out = {}
    for item in items:
        namespace, sep, url = item.partition("=")
        if not sep or not namespace or not url.startswith(("http://", "https://")):
            raise SystemExit(f"--activator {item!r}: expected NAMESPACE=http://host:port/metrics")
        out[namespace] = url
    return out


def engine_policy(enabled: str, release_namespace: str, metrics_from: str,
                  own_namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> Any:
    """The EnginePolicy the flags ask for (None when off); exits naming a malformed flag."""
    import re

    from deepserve.operator.api.schema_types import DNS_LABEL, LABEL_VALUE, QUALIFIED_NAME
    from deepserve.operator.builders.context import EnginePolicy

    if enabled == "off":
        return None
    namespace = release_namespace
    if not namespace:
        with contextlib.suppress(OSError):
            namespace = own_namespace_file.read_text().strip()
    namespace = namespace or "deepserve"
    if not re.match(DNS_LABEL.replace("[a-z]", "[a-z0-9]", 1), namespace):
        raise SystemExit(f"--release-namespace {namespace!r}: not a namespace name")
    where, sep, label = metrics_from.partition("/")
    key, eq, value = label.partition("=")
    if not (sep and eq and re.match(QUALIFIED_NAME, key) and re.match(LABEL_VALUE, value)) or not where:
        raise SystemExit(f"--metrics-from {metrics_from!r}: expected NAMESPACE/KEY=VALUE ('*' for any namespace), "
                         "KEY a label key and VALUE a label value")
    return EnginePolicy(namespace, None if where == "*" else where, ((key, value),))


def _run(args: argparse.Namespace) -> int:
    activators = _activators(args.activator)
    if args.shards and not args.leader_elect:
        raise SystemExit("--shards: needs --leader-elect NAMESPACE/NAME (where the shard Leases live)")
    shard_set = None
    if args.shards:
        from deepserve.operator.sharding import ShardSet

        shard_set = ShardSet(args.shards)
    if args.ingest_key_file:
        from deepserve.operator.metering.credentials import CredentialError, IngestKeyFile

        try:
            IngestKeyFile(args.ingest_key_file, field="--ingest-key-file")  # fail at start, naming the flag, not per reconcile
        except CredentialError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    import kopf

    _limit_malloc_arenas()

    from deepserve.operator.autoscaler.loop import AutoscalerOptions
    from deepserve.operator.builders import Settings
    from deepserve.operator.controller.handlers import OperatorOptions, register

    gateway_api = _gateway_api(args.kubeconfig, args.gateway_api)
    parent = tuple(args.gateway.split("/", 1)) if args.gateway else None
    settings = Settings(engine_image=args.engine_image, usage_endpoint=args.usage_endpoint,
                        gateway_api=gateway_api, gateway_parent=parent,
                        engine_runner=args.engine_runner, allow_pool_move=args.allow_pool_move,  # type: ignore[arg-type]
                        leaderworkerset=_leaderworkerset_api(args.kubeconfig),
                        engine_policy=engine_policy(args.engine_network_policy, args.release_namespace,
                                                    args.metrics_from),
                        usage_credentials=bool(args.ingest_key_file))
    autoscaler = AutoscalerOptions(tick_s=args.autoscale_tick, manual_hold_s=args.manual_hold,
                                   allow_pool_move=args.allow_pool_move,
                                   activators=activators) if args.autoscale_tick > 0 else None
    options = OperatorOptions(kubeconfig=args.kubeconfig, settings=settings, resync_seconds=args.resync_seconds,
                              autoscaler=autoscaler, ingest_key_file=args.ingest_key_file or None,
                              shards=shard_set)
    registry = kopf.OperatorRegistry()
    register(registry, options, gateway_api)
    standalone = args.standalone or bool(args.leader_elect)  # the Lease, not kopf peering, picks who acts
    if not standalone:
        _ensure_peering(args.kubeconfig, args.peering, args.namespace)
    priority = args.priority if args.priority is not None else random.randint(1, 2**31 - 1)
    log.info("deepserve operator starting (gateway API: %s, peering: %s, priority %d)",
             gateway_api, "off" if standalone else args.peering, priority)

    def run_kopf() -> None:
        kopf.run(
            registry=registry, standalone=standalone, priority=priority,
            peering_name=None if standalone else args.peering,
            clusterwide=not args.namespace, namespaces=args.namespace,
            liveness_endpoint=args.liveness or None, memo=kopf.Memo(),
        )

    if shard_set is not None:
        from deepserve.operator.sharding import run_sharded

        return run_sharded(args.kubeconfig, args.leader_elect, args.lease_duration, args.lease_renew, shard_set,
                           run_kopf, health=args.health_address)
    if args.leader_elect:
        from deepserve.operator.leases import run_leader_elected

        return run_leader_elected(args.kubeconfig, args.leader_elect, args.lease_duration, args.lease_renew,
                                  run_kopf, health=args.health_address)
    server = None
    if args.health_address:  # no Lease loop: healthy while the process runs
        from deepserve.operator.health import HealthServer

        server = HealthServer.start(args.health_address, lambda: (True, {"role": "single"}))
    try:
        run_kopf()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(0)
