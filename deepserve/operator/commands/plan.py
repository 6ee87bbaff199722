"""``deepserve plan``: capacity planning from the command line.

* ``plan model``    - rank pools x TP degrees for a model (HF config.json or shape flags)
* ``plan pools``    - show the pools of a pools file or of the cluster (kubeconfig)
* ``plan hardware`` - search the accelerator knowledge base
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from deepserve.engine.hardware import load_catalog
from deepserve.operator.placement import (
    DiscoveredPools,
    ModelShape,
    PlacementRequest,
    ShapeError,
    discover_pools,
    plan_placement,
    pools_from_document,
)
from deepserve.operator.placement.planner import PRECISIONS, STRATEGIES


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _cluster_objects(kubeconfig: str | None, context: str | None) -> DiscoveredPools:
    """Read Nodes, Pods and GPUNodePools from the cluster (the only I/O of this group)."""
    # imported here: only this path needs a cluster
    from deepserve.operator.kube import Kube, KubeError

    kube = Kube.from_kubeconfig(kubeconfig, context)
    try:
        nodes = kube.list("v1", "Node")
        pods = kube.list("v1", "Pod", field_selector="status.phase!=Succeeded,status.phase!=Failed")
        try:
            gnp = kube.list("deepserve.io/v1alpha1", "GPUNodePool")
        except KubeError as e:
            if e.status != 404:
                raise
            gnp = []  # CRD not installed: nodes alone still describe the pools
    finally:
        kube.close()
    return discover_pools(nodes, pods, gnp)


def _load_pools(args: argparse.Namespace) -> DiscoveredPools:
    if args.pools_file:
        docs = [d for d in yaml.safe_load_all(Path(args.pools_file).read_text()) if d]
        pools = [p for d in docs for p in pools_from_document(d)]
        return DiscoveredPools(pools=pools, unknown=[])
    return _cluster_objects(args.kubeconfig or None, args.context)


def _shape(args: argparse.Namespace) -> ModelShape:
    if args.hf_config:
        cfg = json.loads(Path(args.hf_config).read_text())
        if not isinstance(cfg, dict):
            raise ShapeError(f"--hf-config {args.hf_config}: config.json must be a JSON object")
        return ModelShape.from_hf_config(cfg, name=Path(args.hf_config).parent.name)
    missing = [f for f in ("params", "layers", "hidden", "heads") if getattr(args, f) is None]
    if missing:
        raise ShapeError(f"give --hf-config or all of --{', --'.join(missing)}")
    params = int(float(args.params))
    return ModelShape(
        total_params=params, active_params=int(float(args.active_params or params)),
        layers=args.layers, hidden_size=args.hidden, heads=args.heads,
        kv_heads=args.kv_heads or args.heads, head_dim=args.head_dim or args.hidden // args.heads,
        vocab_size=args.vocab, max_context=args.context_length,
        moe_experts=args.experts, experts_per_token=args.experts_per_token,
        kv_lora_rank=args.kv_lora_rank, qk_rope_head_dim=args.qk_rope_head_dim, name="cli",
    )


def _request(args: argparse.Namespace) -> PlacementRequest:
    return PlacementRequest(
        precision=args.precision, strategy=args.strategy,
        allowed_pools=tuple(p for p in (args.allowed_pools or "").split(",") if p),
        gpus_per_replica=args.gpus_per_replica, max_tp=args.max_tp, replicas=args.replicas,
        concurrency=args.concurrency, context_length=args.context_length,
        slo_min_tokens_per_s=args.slo_tokens_per_s, slo_max_ttft_ms=args.slo_ttft_ms,
        prompt_tokens=args.prompt_tokens, currency=args.currency,
    )


def cmd_model(args: argparse.Namespace) -> int:
    """Print the ranked placement table; exit 1 when no option is feasible."""
    try:
        shape, request = _shape(args), _request(args)
        if shape.max_context and request.context_length > shape.max_context:
            raise ShapeError(f"--context-length {request.context_length} exceeds the model's "
                             f"max_position_embeddings {shape.max_context}")
    except (ShapeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        found = _load_pools(args)
    except Exception as e:  # config, connection or parse errors: say which, no traceback
        print(f"error: cannot read pools: {e}", file=sys.stderr)
        return 2
    plan = plan_placement(shape, found.pools, request)
    for warning in found.unknown:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps({"reason": plan.reason,
                          "chosen": plan.chosen.as_status() if plan.chosen else None,
                          "ranked": [c.as_status() for c in plan.ranked]}, indent=2))
        return 0 if plan.chosen else 1
    print(f"model {shape.name or '?'}: {shape.total_params / 1e9:.1f}B params "
          f"({shape.active_params / 1e9:.1f}B active), {shape.layers} layers, "
          f"{shape.heads}/{shape.kv_heads} heads{', MLA' if shape.is_mla else ''}")
    rows = []
    for i, c in enumerate(plan.ranked[: args.top]):
        cost = f"{c.cost_per_million_tokens:.4f}" if c.cost_per_million_tokens is not None else "-"
        rows.append([
            str(i + 1) if c.feasible else "x", c.pool, c.accelerator_id, str(c.tensor_parallel),
            c.precision, f"{c.memory_gib_per_gpu:.1f}", f"{c.per_request_tokens_per_s:.0f}",
            f"{c.replica_tokens_per_s:.0f}", f"{c.ttft_ms:.0f}", cost,
            c.rejected_reason or "ok",
        ])
    print(_table(["#", "pool", "accelerator", "tp", "prec", "GiB/gpu", "tok/s/req",
                  "tok/s/replica", "ttft_ms", f"{request.currency}/1M", "status"], rows))
    print(plan.reason)
    return 0 if plan.chosen else 1


def cmd_pools(args: argparse.Namespace) -> int:
    """Print the pools and discovery warnings."""
    try:
        found = _load_pools(args)
    except Exception as e:  # config, connection or parse errors: say which, no traceback
        print(f"error: cannot read pools: {e}", file=sys.stderr)
        return 2
    rows = [[p.name, p.accelerator_id, str(p.gpus_per_node), str(p.nodes), str(p.free_gpus),
             str(p.max_nodes), "-" if p.price_per_gpu_hour is None else f"{p.price_per_gpu_hour:g}",
             p.currency, p.source] for p in found.pools]
    print(_table(["pool", "accelerator", "gpus/node", "nodes", "free", "max_nodes",
                  "price/gpu-h", "cur", "source"], rows))
    for warning in found.unknown:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_hardware(args: argparse.Namespace) -> int:
    """Print catalog rows matching --vendor / --search / --label."""
    cat = load_catalog()
    if args.label:
        key, _, value = args.label.partition("=")
        found = cat.candidates_by_label(key, value)
    else:
        text = (args.search or "").lower()
        found = tuple(a for a in cat if (not args.vendor or a.vendor == args.vendor)
                      and (text in a.id or text in a.name.lower()))
    rows: list[list[str]] = []
    for a in found:
        t = a.tflops
        rows.append([a.id, f"{a.memory_gib:g}", a.memory_type, f"{a.bandwidth_gbs:g}",
                     *(f"{t[p]:g}" if p in t else "-" for p in ("bf16", "fp16", "fp8", "fp4")),
                     f"{a.interconnect_gbs:g}", str(a.year), a.basis])
    print(_table(["id", "GiB", "mem", "GB/s", "bf16", "fp16", "fp8", "fp4", "link GB/s",
                  "year", "basis"], rows))
    print(f"{len(rows)} of {len(cat)} accelerators")
    return 0 if rows else 1


def _pool_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pools-file", help="YAML: {pools: [...]} or GPUNodePool manifests")
    src.add_argument("--kubeconfig", nargs="?", const="", default=None,
                     help="read pools from the cluster (default kubeconfig when no path)")
    p.add_argument("--context", help="kubeconfig context")


def register(subparsers: Any) -> None:
    """Add the ``plan`` group to the ``deepserve`` parser."""
    plan = subparsers.add_parser("plan", help="capacity planning: placement, pools, hardware")
    sub = plan.add_subparsers(dest="plan_command", required=True, metavar="SUBCOMMAND")

    m = sub.add_parser("model", help="rank pools and TP degrees for a model")
    m.add_argument("--hf-config", help="path to a Hugging Face config.json")
    for flag in ("--layers", "--hidden", "--heads", "--kv-heads", "--head-dim"):
        m.add_argument(flag, type=int)
    m.add_argument("--params", help="total parameters, e.g. 70e9")
    m.add_argument("--active-params", help="active parameters per token (MoE)")
    m.add_argument("--vocab", type=int, default=32000)
    for flag in ("--experts", "--experts-per-token", "--kv-lora-rank", "--qk-rope-head-dim"):
        m.add_argument(flag, type=int, default=0)
    _pool_source(m)
    m.add_argument("--precision", choices=PRECISIONS, default="auto")
    m.add_argument("--strategy", choices=STRATEGIES, default="cost")
    m.add_argument("--concurrency", type=int, default=8, help="sequences per replica")
    m.add_argument("--context-length", type=int, default=4096)
    m.add_argument("--prompt-tokens", type=int, help="default: half the context")
    m.add_argument("--replicas", type=int, default=1)
    m.add_argument("--max-tp", type=int, default=8)
    m.add_argument("--gpus-per-replica", type=int, help="fix the TP degree")
    m.add_argument("--slo-tokens-per-s", type=float, default=0.0)
    m.add_argument("--slo-ttft-ms", type=float, default=0.0)
    m.add_argument("--allowed-pools", help="comma-separated pool names")
    m.add_argument("--currency", default="USD")
    m.add_argument("--top", type=int, default=20, help="rows to print")
    m.add_argument("--json", action="store_true", help="print the plan as JSON")
    m.set_defaults(func=cmd_model)

    p = sub.add_parser("pools", help="show pools from a file or the cluster")
    _pool_source(p)
    p.set_defaults(func=cmd_pools)

    h = sub.add_parser("hardware", help="search the accelerator knowledge base")
    h.add_argument("--vendor")
    h.add_argument("--search", help="substring of id or name")
    h.add_argument("--label", help="KEY=VALUE node label to resolve")
    h.set_defaults(func=cmd_hardware)
