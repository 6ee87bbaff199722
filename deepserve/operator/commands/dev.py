"""``deepserve dev``: the local control plane (build tools, up, down, status)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``dev`` command group."""
    p = sub.add_parser("dev", help="local Kubernetes control plane with simulated GPU pools")
    dev = p.add_subparsers(dest="dev_cmd", metavar="ACTION", required=True)

    t = dev.add_parser("tools", help="build the pinned control-plane binaries (slow the first time)")
    t.add_argument("--force", action="store_true", help="rebuild even if cached")
    t.set_defaults(func=_tools)

    up = dev.add_parser("up", help="start etcd, kube-apiserver, controller-manager, scheduler, KWOK")
    _common(up)
    up.add_argument("--pools", type=Path, help="simulated pools file (default: the built-in one)")
    up.add_argument("--timeout", type=float, default=120.0)
    up.set_defaults(func=_up)

    down = dev.add_parser("down", help="stop the local cluster")
    _common(down)
    down.add_argument("--purge", action="store_true", help="also delete its data")
    down.set_defaults(func=_down)

    st = dev.add_parser("status", help="show the local cluster's state")
    _common(st)
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")
    st.set_defaults(func=_status)

    r = dev.add_parser("runner", help="(dev only) play engine pods with real local Triton processes")
    r.add_argument("--kubeconfig", required=True)
    r.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="override an engine container variable (e.g. the usage endpoint)")
    r.set_defaults(func=_runner)

    kc = dev.add_parser("kubeconfig", help="print the admin kubeconfig path")
    _common(kc)
    kc.set_defaults(func=lambda a: print(_cluster(a).kubeconfig) or 0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, help="data dir (default ~/.local/share/deepserve/clusters/default)")


def _ports_from_env() -> Any:
    from deepserve.operator.dev.cluster import Ports

    base = os.environ.get("DEEPSERVE_DEV_PORT_BASE")
    if not base:
        return None
    b = int(base)
    return Ports(apiserver=b, etcd_client=b + 1, etcd_peer=b + 2, controller_manager=b + 3,
                 scheduler=b + 4, kwok=b + 5)


def _cluster(args: argparse.Namespace, **kw: Any) -> Any:
    from deepserve.operator.dev.cluster import LocalCluster

    return LocalCluster(state_dir=args.state_dir, ports=_ports_from_env(), say=_say, **kw)


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _tools(args: argparse.Namespace) -> int:
    from deepserve.operator.dev import toolchain

    try:
        toolchain.build(force=args.force, say=_say)
    except toolchain.ToolchainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _up(args: argparse.Namespace) -> int:
    from deepserve.operator.dev.cluster import ClusterError
    from deepserve.operator.dev.toolchain import ToolchainError

    try:
        c = _cluster(args, pools_file=args.pools)
        c.start(timeout=args.timeout)
    except (ClusterError, ToolchainError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={c.kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    c = _cluster(args)
    if args.purge:
        c.destroy()
        _say(f"cluster stopped and {c.state_dir} deleted")
    else:
        stopped = c.stop()
        _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _status(args: argparse.Namespace) -> int:
    c = _cluster(args)
    st = c.status()
    if args.output == "json":
        print(json.dumps(st, indent=2))
    else:
        for k, v in st.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}={b}" for a, b in v.items())
            print(f"{k:12} {v}")
    return 0 if st["healthy"] else 1


def _runner(args: argparse.Namespace) -> int:
    import signal

    from deepserve.operator.dev.runner import LocalRunner

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)  # run the finally below: stop every Triton this runner started

    signal.signal(signal.SIGTERM, _terminate)
    overrides = dict(e.split("=", 1) for e in args.env)
    runner = LocalRunner(args.kubeconfig, env_overrides=overrides)
    _say("local runner playing pods labelled deepserve.io/runner=local (Ctrl-C stops)")
    try:
        runner.run()
    finally:
        runner.stop()
    return 0
