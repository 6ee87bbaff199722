"""``deepserve keys create|list|revoke|rotate``: a tenant's API keys, held as Secrets.

``create`` prints the key once on stdout (nothing else is written there) and stores only
a salted hash; ``list`` never prints secrets; ``revoke`` deletes the key's Secret (every
gateway refuses it within seconds); ``rotate`` creates a new key and ends the old one,
now or after ``--grace``. A tenant holds at most ``spec.keysAllowed`` (2) live keys.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from deepserve.operator.tenancy.keys import (
    DEFAULT_NAMESPACE,
    KEY_SELECTOR,
    TENANT_LABEL,
    KeyRecord,
    build_key_secret,
    format_time,
    new_key,
    parse_duration,
    record_from_secret,
    secret_name,
)
from deepserve.operator.tenancy.tenants import API_VERSION, KIND, tenant_from_object


class KeyCommandError(RuntimeError):
    """A refusal the CLI reports in one line (exit 2)."""


def register(sub: Any) -> None:
    """Add the ``keys`` command group."""
    keys = sub.add_parser("keys", help="API keys of tenants (Secrets holding a salted hash)")
    keys.add_argument("--kubeconfig", default=None, help="kubeconfig (default: the usual lookup)")
    keys.add_argument("--namespace", default=os.environ.get("DEEPSERVE_KEYS_NAMESPACE", DEFAULT_NAMESPACE),
                      help="namespace of the key Secrets (default $DEEPSERVE_KEYS_NAMESPACE or "
                           f"{DEFAULT_NAMESPACE})")
    ks = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = ks.add_parser("create", help="mint a key; it is printed once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--expires", default="never", help="lifetime: 30d, 12h, 90m, 45s or never")
    create.set_defaults(func=_run, action="create")
    lst = ks.add_parser("list", help="keys (ids, tenant, created, expiry; never secrets)")
    lst.add_argument("--tenant", default=None)
    lst.set_defaults(func=_run, action="list")
    revoke = ks.add_parser("revoke", help="revoke a key by id (deletes its Secret)")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_run, action="revoke")
    rotate = ks.add_parser("rotate", help="mint a new key for the old key's tenant, then end the old one")
    rotate.add_argument("key_id", help="the key to replace")
    rotate.add_argument("--expires", default="never", help="lifetime of the new key")
    rotate.add_argument("--grace", default="0s",
                        help="how long the old key keeps working (e.g. 1h); 0s revokes it at once")
    rotate.set_defaults(func=_run, action="rotate")


def _run(args: argparse.Namespace) -> int:
    from deepserve.operator.kube import Kube, KubeError

    kube = Kube.from_kubeconfig(args.kubeconfig)
    try:
        if args.action == "create":
            key, _ = create_key(kube, args.namespace, args.tenant, parse_duration(args.expires))
            print(key)
        elif args.action == "list":
            _print_table(list_keys(kube, args.namespace, args.tenant))
        elif args.action == "revoke":
            if not revoke_key(kube, args.namespace, args.key_id):
                raise KeyCommandError(f"key_id: no key {args.key_id!r} in namespace {args.namespace}")
            print(f"revoked {args.key_id}", file=sys.stderr)
        else:
            grace = parse_duration(args.grace, "--grace", allow_zero=True)
            if grace is None:
                raise KeyCommandError("--grace: must be a duration (the old key has to end)")
            key, _ = rotate_key(kube, args.namespace, args.key_id, parse_duration(args.expires), grace)
            print(key)
    except (KeyCommandError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KubeError as e:
        print(f"error: the API server refused: {e.status} {e.message}", file=sys.stderr)
        return 1
    finally:
        kube.close()
    return 0


def _records(kube: Any, namespace: str, tenant: str | None) -> list[KeyRecord]:
    selector = KEY_SELECTOR + (f",{TENANT_LABEL}={tenant}" if tenant else "")
    recs = [record_from_secret(s) for s in kube.list("v1", "Secret", namespace, label_selector=selector)]
    return sorted((r for r in recs if r is not None), key=lambda r: (r.tenant, r.created))


def create_key(kube: Any, namespace: str, tenant: str, lifetime: timedelta | None,
               now: datetime | None = None, ignore: str | None = None) -> tuple[str, KeyRecord]:
    """Mint a key for ``tenant``; returns ``(key, record)``.

    Raises KeyCommandError when the tenant does not exist or already holds its
    ``keysAllowed`` live keys (``ignore``: a key id not to count, for rotation).
    """
    obj = kube.get(API_VERSION, KIND, tenant)
    if obj is None:
        raise KeyCommandError(f"tenant: Tenant {tenant!r} does not exist")
    allowed = tenant_from_object(obj).keys_allowed
    now = now or datetime.now(UTC).replace(microsecond=0)
    live = [r for r in _records(kube, namespace, tenant) if r.live(now) and r.key_id != ignore]
    if len(live) >= allowed:
        raise KeyCommandError(f"tenant: {tenant!r} already holds {len(live)} live keys (at most "
                              f"{allowed}); revoke one first ({', '.join(r.key_id for r in live)})")
    key, key_id, secret = new_key()
    expires = now + lifetime if lifetime else None
    kube.create(build_key_secret(tenant, key_id, secret, namespace, now, expires))
    return key, KeyRecord(key_id, tenant, b"", b"", now, expires)


def list_keys(kube: Any, namespace: str, tenant: str | None = None) -> list[KeyRecord]:
    """Every key record (optionally of one tenant), oldest first per tenant."""
    return _records(kube, namespace, tenant)


def revoke_key(kube: Any, namespace: str, key_id: str) -> bool:
    """Delete the key's Secret; False when there was none."""
    return bool(kube.delete("v1", "Secret", secret_name(key_id), namespace))


def rotate_key(kube: Any, namespace: str, key_id: str, lifetime: timedelta | None,
               grace: timedelta) -> tuple[str, KeyRecord]:
    """A new key for ``key_id``'s tenant; the old key ends now (grace 0) or after ``grace``."""
    old = kube.get("v1", "Secret", secret_name(key_id), namespace)
    rec = record_from_secret(old) if old else None
    if rec is None:
        raise KeyCommandError(f"key_id: no key {key_id!r} in namespace {namespace}")
    # Without grace the old key is about to go, so it does not count against the limit.
    key, new = create_key(kube, namespace, rec.tenant, lifetime, ignore=None if grace else key_id)
    if not grace:
        revoke_key(kube, namespace, key_id)
        return key, new
    end = new.created + grace
    if rec.expires is None or end < rec.expires:
        from deepserve.operator.kube import resource_path

        patch = {"data": {"expires": base64.b64encode(format_time(end).encode()).decode()}}
        kube.request("PATCH", resource_path("v1", "Secret", namespace, secret_name(key_id)), body=patch,
                     content_type="application/merge-patch+json")
    return key, new


def _print_table(records: list[KeyRecord]) -> None:
    now = datetime.now(UTC)
    rows = [("KEY ID", "TENANT", "CREATED", "EXPIRES", "STATE")]
    rows += [(r.key_id, r.tenant, format_time(r.created), format_time(r.expires),
              "live" if r.live(now) else "expired") for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
