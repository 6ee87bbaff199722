"""``deepserve tenants create|list|show|suspend|resume``: the callers of the gateway.

A thin layer over the cluster-scoped ``Tenant`` kind (docs/tenancy.md), consistent with
``deepserve keys``: ``create`` builds the plan from flags and lets the API server validate
it (its schema and CEL rules name the bad field); ``list`` and ``show`` print tables, never
a key's hash; ``suspend`` sets ``spec.suspended`` so every key of the tenant is refused
(401) on every gateway replica at its next key refresh, and ``resume`` clears it. Exit 2 for
a refusal the CLI can name, 1 for one the API server gives.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.tenancy.keys import DEFAULT_NAMESPACE, format_time
from deepserve.operator.tenancy.tenants import (
    API_VERSION,
    KIND,
    TenantView,
    build_tenant,
    tenant_from_object,
)


class TenantCommandError(RuntimeError):
    """A refusal the CLI reports in one line (exit 2)."""


def register(sub: Any) -> None:
    """Add the ``tenants`` command group."""
    tenants = sub.add_parser("tenants", help="tenants of the gateway (the Tenant kind)")
    tenants.add_argument("--kubeconfig", default=None, help="kubeconfig (default: the usual lookup)")
    tenants.add_argument("--keys-namespace", default=os.environ.get("DEEPSERVE_KEYS_NAMESPACE", DEFAULT_NAMESPACE),
                         help="namespace of the key Secrets, for the key counts (default "
                              f"$DEEPSERVE_KEYS_NAMESPACE or {DEFAULT_NAMESPACE})")
    ts = tenants.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)
    create = ts.add_parser("create", help="create a Tenant with a plan")
    create.add_argument("name", help="the tenant (its billing identity; a DNS label)")
    create.add_argument("--all-models", action="store_true", help="allow every model (plan.models.allowAll)")
    create.add_argument("--models-namespace", action="append", default=[], metavar="NS",
                        help="allow the models of this namespace (repeatable)")
    create.add_argument("--model", action="append", default=[], metavar="NS/NAME",
                        help="allow this model (repeatable)")
    create.add_argument("--model-label", action="append", default=[], metavar="KEY=VALUE",
                        help="allow only models with this label (repeatable; all must match)")
    create.add_argument("--requests-per-minute", type=int, default=None)
    create.add_argument("--tokens-per-minute", type=int, default=None, help="prompt + generated tokens")
    create.add_argument("--max-concurrent", type=int, default=None, help="requests in flight at once")
    create.add_argument("--monthly-spend-cap", default=None, metavar="AMOUNT", help='a decimal, e.g. "250.00"')
    create.add_argument("--currency", default=None, help="ISO 4217 currency of the cap (default USD)")
    create.add_argument("--keys-allowed", type=int, default=None, help="live keys at once (1 or 2)")
    create.set_defaults(func=_run, action="create")
    lst = ts.add_parser("list", help="tenants with their limits, state and live keys")
    lst.set_defaults(func=_run, action="list")
    show = ts.add_parser("show", help="one tenant's plan and its keys (ids and expiry only)")
    show.add_argument("name")
    show.set_defaults(func=_run, action="show")
    for action, text in (("suspend", "refuse every key of the tenant (401) until resumed"),
                         ("resume", "honour the tenant's keys again")):
        p = ts.add_parser(action, help=text)
        p.add_argument("name")
        p.set_defaults(func=_run, action=action)


def _run(args: argparse.Namespace) -> int:
    from deepserve.operator.kube import Kube, KubeError

    kube = Kube.from_kubeconfig(args.kubeconfig)
    try:
        if args.action == "create":
            create_tenant(kube, args.name, plan_from_args(args),
                          keys_allowed=args.keys_allowed)
            print(f"tenant/{args.name} created")
        elif args.action == "list":
            _print_rows(list_rows(kube, args.keys_namespace))
        elif args.action == "show":
            _print_show(show_tenant(kube, args.name, args.keys_namespace))
        else:
            set_suspended(kube, args.name, args.action == "suspend")
            print(f"tenant/{args.name} {'suspended' if args.action == 'suspend' else 'resumed'}")
    except (TenantCommandError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KubeError as e:
        print(f"error: the API server refused: {e.status} {e.message}", file=sys.stderr)
        return 1
    finally:
        kube.close()
    return 0


def plan_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``spec.plan`` from the create flags (absent flags stay absent: unlimited / none)."""
    models: dict[str, Any] = {}
    if args.all_models:
        models["allowAll"] = True
    if args.models_namespace:
        models["namespaces"] = list(args.models_namespace)
    if args.model:
        models["names"] = list(args.model)
    if args.model_label:
        labels = {}
        for item in args.model_label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise TenantCommandError(f"--model-label: {item!r} is not KEY=VALUE")
            labels[key] = value
        models["labels"] = labels
    plan: dict[str, Any] = {"models": models}
    for field, value in (("requestsPerMinute", args.requests_per_minute),
                         ("tokensPerMinute", args.tokens_per_minute),
                         ("maxConcurrentRequests", args.max_concurrent)):
        if value is not None:
            plan[field] = value
    if args.monthly_spend_cap is not None:
        plan["monthlySpendCap"] = {"amount": args.monthly_spend_cap, "currency": args.currency or "USD"}
    elif args.currency is not None:
        raise TenantCommandError("--currency: only with --monthly-spend-cap")
    return plan


def create_tenant(kube: Any, name: str, plan: dict[str, Any], keys_allowed: int | None = None) -> dict[str, Any]:
    """Create Tenant ``name`` with ``plan``; the API server validates it (KubeError 422 names the
    field). Raises TenantCommandError when the tenant exists already."""
    spec: dict[str, Any] = {"plan": plan}
    if keys_allowed is not None:
        spec["keysAllowed"] = keys_allowed
    if kube.get(API_VERSION, KIND, name) is not None:
        raise TenantCommandError(f"name: Tenant {name!r} exists already")
    return dict(kube.create(build_tenant(name, spec)))


def _live_keys(kube: Any, keys_namespace: str) -> dict[str, list[Any]]:
    from deepserve.operator.commands.keys import list_keys

    now = datetime.now(UTC)
    by_tenant: dict[str, list[Any]] = {}
    for rec in list_keys(kube, keys_namespace):
        if rec.live(now):
            by_tenant.setdefault(rec.tenant, []).append(rec)
    return by_tenant


def _view(obj: dict[str, Any]) -> TenantView | None:
    try:
        return tenant_from_object(obj)
    except SpecError:
        return None  # the gateway refuses its keys too; list shows it as invalid


def _models_text(view: TenantView) -> str:
    m = view.plan.models
    if m.allow_all:
        return "all"
    parts = [f"ns={','.join(m.namespaces)}"] if m.namespaces else []
    parts += [f"names={','.join(m.names)}"] if m.names else []
    parts += [f"labels={','.join(f'{k}={v}' for k, v in m.labels)}"] if m.labels else []
    return " ".join(parts) or "none"


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _cap(view: TenantView) -> str:
    cap = view.plan.monthly_spend_cap
    return "-" if cap is None else f"{cap} {view.plan.currency}"


def list_rows(kube: Any, keys_namespace: str) -> list[tuple[str, ...]]:
    """One row per Tenant: name, state, models, rpm, tpm, concurrency, spend cap, live/allowed keys."""
    live = _live_keys(kube, keys_namespace)
    rows: list[tuple[str, ...]] = []
    for obj in sorted(kube.list(API_VERSION, KIND), key=lambda o: o["metadata"]["name"]):
        name = obj["metadata"]["name"]
        view = _view(obj)
        if view is None:
            rows.append((name, "invalid", "-", "-", "-", "-", "-", f"{len(live.get(name, []))}/-"))
            continue
        p = view.plan
        rows.append((name, "suspended" if view.suspended else "active", _models_text(view),
                     _limit(p.requests_per_minute), _limit(p.tokens_per_minute),
                     _limit(p.max_concurrent_requests), _cap(view),
                     f"{len(live.get(name, []))}/{view.keys_allowed}"))
    return rows


def show_tenant(kube: Any, name: str, keys_namespace: str) -> dict[str, Any]:
    """What ``show`` prints: the tenant's fields and its live keys (id, created, expiry)."""
    obj = kube.get(API_VERSION, KIND, name)
    if obj is None:
        raise TenantCommandError(f"name: Tenant {name!r} does not exist")
    view = _view(obj)
    if view is None:
        raise TenantCommandError(f"name: Tenant {name!r} does not validate (its keys are refused)")
    p = view.plan
    return {
        "name": name,
        "state": "suspended" if view.suspended else "active",
        "models": _models_text(view),
        "requests/min": _limit(p.requests_per_minute),
        "tokens/min": _limit(p.tokens_per_minute),
        "concurrent": _limit(p.max_concurrent_requests),
        "monthly spend cap": _cap(view),
        "keys allowed": str(view.keys_allowed),
        "keys": [(r.key_id, format_time(r.created), format_time(r.expires))
                 for r in _live_keys(kube, keys_namespace).get(name, [])],
    }


def set_suspended(kube: Any, name: str, suspended: bool) -> dict[str, Any]:
    """Merge-patch ``spec.suspended``; raises TenantCommandError when the tenant does not exist."""
    from deepserve.operator.kube import KubeError, resource_path

    try:
        return dict(kube.request("PATCH", resource_path(API_VERSION, KIND, None, name),
                                 body={"spec": {"suspended": suspended}},
                                 content_type="application/merge-patch+json"))
    except KubeError as e:
        if e.status == 404:
            raise TenantCommandError(f"name: Tenant {name!r} does not exist") from None
        raise


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    _table([("NAME", "STATE", "MODELS", "RPM", "TPM", "CONCURRENT", "SPEND CAP", "KEYS"), *rows])


def _print_show(shown: dict[str, Any]) -> None:
    for field, value in shown.items():
        if field != "keys":
            print(f"{field + ':':<19}{value}")
    keys = shown["keys"]
    print(f"{'live keys:':<19}{len(keys)}")
    if keys:
        _table([("  KEY ID", "CREATED", "EXPIRES"), *[("  " + k, c, e) for k, c, e in keys]])
