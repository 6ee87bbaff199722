"""``deepserve gateway run``: the OpenAI front door with keys, spend caps and cluster routes.

It wires the gateway server (``deepserve.operator.gateway``) to a :class:`KeyIndex` (Tenants
and key Secrets), an :class:`HttpSpendSource` (the billing server's spend endpoint) and the
cluster's InferenceModels (``KubeDiscovery``), or to a static routes file. Secrets come from
files, never from argv: ``--billing-token-file`` and the TLS key file.

``/readyz`` answers 503 while the key index is stale (so a replica that cannot see
revocations leaves its Service); on SIGTERM it turns 503 first and the process stops after
``--drain-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import yaml

from deepserve.operator.tenancy.keys import DEFAULT_NAMESPACE

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    """Add the ``gateway`` command group."""
    gw = sub.add_parser("gateway", help="the OpenAI-compatible gateway (tenants, keys, limits, routing)")
    gs = gw.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    run = gs.add_parser("run", help="serve the gateway")
    run.add_argument("--kubeconfig", default=None, help="kubeconfig (default: the usual lookup / in-cluster)")
    run.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to serve on")
    run.add_argument("--keys-namespace", default=os.environ.get("DEEPSERVE_KEYS_NAMESPACE", DEFAULT_NAMESPACE),
                     help="namespace of the key Secrets")
    run.add_argument("--key-refresh", type=float, default=1.0, metavar="SECONDS",
                     help="relist Tenants and keys this often (revocation latency)")
    run.add_argument("--namespace", action="append", default=[],
                     help="discover InferenceModels in this namespace (repeatable; default all)")
    run.add_argument("--routes-file", type=Path, default=None,
                     help="static routes (YAML/JSON list) instead of discovering them from the cluster")
    run.add_argument("--billing-url", default="", help="billing server base URL (spend caps)")
    run.add_argument("--billing-token-file", type=Path, default=None,
                     help="file holding the billing read token")
    run.add_argument("--tls-cert-file", type=Path, default=None)
    run.add_argument("--tls-key-file", type=Path, default=None)
    run.add_argument("--admin-listen", default="",
                     help="HOST:PORT for /metrics and /held/<namespace> (then not on the public port)")
    run.add_argument("--redis-url-file", type=Path, default=None,
                     help="file holding a redis:// URL: limits shared by every replica")
    run.add_argument("--drain-seconds", type=float, default=0.0,
                     help="after SIGTERM, report not-ready this long before stopping")
    run.add_argument("--port-file", type=Path, default=None,
                     help="write the bound port here once serving (for --listen HOST:0)")
    run.set_defaults(func=_run)


def load_routes(path: Path) -> list[Any]:
    """ModelRoutes from a YAML/JSON list of ``{namespace, name, upstream | versions, aliases, labels}``."""
    from deepserve.operator.gateway.routing import ModelRoute, VersionTarget

    doc = yaml.safe_load(path.read_text()) or []
    if not isinstance(doc, list):
        raise ValueError(f"--routes-file: {path} must hold a list of routes")
    out = []
    for i, r in enumerate(doc):
        try:
            versions = tuple(VersionTarget(v["name"], int(v.get("weight", 100)), tuple(v.get("upstreams", [])))
                             for v in r.get("versions", []))
            out.append(ModelRoute(r["namespace"], r["name"], upstream=r.get("upstream", ""),
                                  labels=dict(r.get("labels") or {}), aliases=tuple(r.get("aliases", [])),
                                  versions=versions))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"--routes-file: route [{i}] is malformed ({e})") from None
    return out


def _ssl_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert-file and --tls-key-file go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _host_port(listen: str, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag}: {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _run(args: argparse.Namespace) -> int:
    try:
        host, port = _host_port(args.listen)
        tls = _ssl_context(args.tls_cert_file, args.tls_key_file)
        routes = load_routes(args.routes_file) if args.routes_file else None
        token = args.billing_token_file.read_text().strip() if args.billing_token_file else ""
        redis_url = args.redis_url_file.read_text().strip() if args.redis_url_file else ""
        if args.redis_url_file and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("--redis-url-file: the file must hold a redis://, rediss:// or unix:// URL")
        admin = _host_port(args.admin_listen, "--admin-listen") if args.admin_listen else None
        if args.billing_url and not token:
            raise ValueError("--billing-token-file: a read token is needed with --billing-url")
    except (ValueError, OSError, ssl.SSLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from deepserve.operator.gateway.eventloop import run  # uvloop when installed

    return run(_serve(args, (host, port), admin, tls, routes, token, redis_url))


async def _serve(args: argparse.Namespace, listen: tuple[str, int], admin: tuple[str, int] | None,
                 tls: ssl.SSLContext | None, routes: list[Any] | None, token: str, redis_url: str) -> int:
    from aiohttp import web

    from deepserve.operator.gateway.server import Gateway
    from deepserve.operator.kube import Kube, KubeError
    from deepserve.operator.tenancy.keyindex import KeyIndex
    from deepserve.operator.tenancy.spend_client import HttpSpendSource

    kube = Kube.from_kubeconfig(args.kubeconfig)
    index = KeyIndex(kube, args.keys_namespace, interval_s=args.key_refresh)
    try:
        await asyncio.to_thread(index.start)
    except (KubeError, OSError) as e:
        print(f"error: cannot read Tenants and keys from the API server: {e}", file=sys.stderr)
        return 1
    spend = HttpSpendSource(args.billing_url, token) if args.billing_url else None
    discovery = None
    if routes is None:
        from deepserve.operator.gateway.discovery import KubeDiscovery

        discovery = KubeDiscovery(kube, args.namespace or None)
    limiter = None
    if redis_url:
        from deepserve.operator.gateway.redis_limits import RedisLimiter

        limiter = RedisLimiter(redis_url)
    gateway = Gateway(index, routes or [], spend, limiter, discovery=discovery,
                      scale_up=discovery.scale_up if discovery is not None else None)
    draining = asyncio.Event()

    async def readyz(_request: web.Request) -> web.Response:
        ok = index.healthy and not draining.is_set()
        return web.json_response({"ready": ok, "keyIndexFresh": index.healthy}, status=200 if ok else 503)

    # As Gateway.start() serves, plus /readyz (key index fresh, not draining) on both ports.
    app = gateway.app(with_admin=admin is None)
    app.router.add_get("/readyz", readyz)
    runners = [web.AppRunner(app, access_log=None, keepalive_timeout=gateway.config.keepalive_timeout_s,
                             handler_cancellation=True)]
    await runners[0].setup()
    await web.TCPSite(runners[0], listen[0], listen[1], ssl_context=tls, backlog=1024).start()
    if admin is not None:
        admin_app = gateway.admin_app()
        admin_app.router.add_get("/readyz", readyz)
        runners.append(web.AppRunner(admin_app, access_log=None))
        await runners[1].setup()
        await web.TCPSite(runners[1], admin[0], admin[1]).start()
    bound = int(runners[0].addresses[0][1])
    if args.port_file:
        ports = [str(bound)] + ([str(runners[1].addresses[0][1])] if admin is not None else [])
        args.port_file.write_text(" ".join(ports))
    scheme = "https" if tls else "http"
    log.info("gateway serving %s://%s:%d (keys in %s, routes %s, limits %s)", scheme, listen[0], bound,
             args.keys_namespace, "from " + str(args.routes_file) if routes is not None else "discovered",
             "shared in Redis" if redis_url else "per process")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    draining.set()
    await asyncio.sleep(args.drain_seconds)
    for runner in reversed(runners):
        await runner.cleanup()
    index.stop()
    if spend is not None:
        spend.close()
    kube.close()
    log.info("gateway stopped")
    return 0

