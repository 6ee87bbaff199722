"""``deepserve billing``: export, ingest, report, spend, reconcile, prices, owners,
quarantine, release, usage-token, serve.

The ledger is ``--ledger PATH`` or ``$DEEPSERVE_LEDGER``
(default ``~/.local/share/deepserve/ledger.db``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from deepserve.operator.metering import (
    FORMATS,
    LedgerError,
    PriceError,
    PriceSheet,
    UsageLedger,
    export,
    export_to_file,
    parse_bound,
    reconcile,
    start_billing_server,
)
from deepserve.operator.metering.credentials import (
    CredentialError,
    IngestKeyFile,
    file_write_auth,
    mint_write_token,
    read_secret_file,
)
from deepserve.operator.metering.focus import focus_metadata_json, focus_rows
from deepserve.operator.metering.spend import tenant_spend
from deepserve.operator.metering.trust import IngestPolicy

DEFAULT_LEDGER = "~/.local/share/deepserve/ledger.db"


def _ledger_path(args: argparse.Namespace) -> Path:
    return Path(os.path.expanduser(args.ledger or os.environ.get("DEEPSERVE_LEDGER")
                                   or DEFAULT_LEDGER))


def _open(args: argparse.Namespace, *, create: bool = False) -> UsageLedger:
    path = _ledger_path(args)
    if not create and not path.exists():
        raise LedgerError("ledger", f"no ledger at {path} (use --ledger or $DEEPSERVE_LEDGER)")
    return UsageLedger(path)


def _window(args: argparse.Namespace) -> tuple[datetime, datetime]:
    return parse_bound(args.from_, "from"), parse_bound(args.to, "to")


def cmd_export(args: argparse.Namespace) -> int:
    """Write an export to --output (atomically) or stdout."""
    start, end = _window(args)
    with _open(args) as ledger:
        if args.output:
            n = export_to_file(ledger, args.format, start, end, args.output, args.account,
                               args.tenant)
            extra = f" (+ {args.output}.metadata.json)" if args.format == "focus" else ""
            print(f"wrote {n} records to {args.output}{extra}", file=sys.stderr)
        else:
            n = export(ledger, args.format, start, end, sys.stdout, args.account, args.tenant)
            if args.format == "focus" and args.metadata:
                Path(args.metadata).write_text(focus_metadata_json())
    return 0


def _read_events(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    stripped = text.lstrip()
    if stripped.startswith("{") and '"events"' in stripped[:200] and "\n{" not in stripped:
        body = json.loads(text)
        return list(body["events"])
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest events from JSON-lines files or ``{"events": [...]}`` bodies, all or nothing."""
    raw: list[Any] = []
    for path in args.files:
        try:
            raw.extend(_read_events(path))
        except (ValueError, KeyError) as err:
            raise LedgerError("file", f"{path}: not JSON lines or an events body: {err}") from None
    with _open(args, create=True) as ledger:
        result = ledger.ingest_dicts(raw)
    print(f"accepted {len(result.accepted)}, duplicates {len(result.duplicates)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print usage and cost per account and model version for the window."""
    start, end = _window(args)
    totals: dict[tuple[str, str, str], dict[str, Decimal]] = {}
    with _open(args) as ledger:
        for row in focus_rows(ledger, start, end, args.account, tenant=args.tenant):
            key = (str(row["BillingAccountId"]), str(row["ResourceId"]),
                   str(row["BillingCurrency"]))
            acc = totals.setdefault(key, {})
            kind = str(row["x_UsageKind"])
            acc[kind] = acc.get(kind, Decimal(0)) + Decimal(str(row["ConsumedQuantity"]))
            acc["cost"] = acc.get("cost", Decimal(0)) + Decimal(str(row["BilledCost"]))
    print(f"{'ACCOUNT':16} {'MODEL':32} {'REQUESTS':>9} {'PROMPT':>12} {'GENERATED':>12} "
          f"{'GPU-H':>9} {'COST':>14}")
    for (account, resource, currency), acc in sorted(totals.items()):
        print(f"{account:16} {resource:32} {acc.get('requests', 0):>9} "
              f"{acc.get('prompt_tokens', 0):>12} {acc.get('generated_tokens', 0):>12} "
              f"{acc.get('gpu_hours', Decimal(0)):>9.3f} {acc['cost']:>10.4f} {currency}")
    return 0


def cmd_spend(args: argparse.Namespace) -> int:
    """Print a tenant's spend in one month as the spend endpoint's JSON."""
    with _open(args) as ledger:
        print(json.dumps(tenant_spend(ledger, args.tenant, args.month).to_dict(),
                         sort_keys=True))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Print events vs scraped counters per model version; exit 3 if any gap."""
    start, end = _window(args)
    with _open(args) as ledger:
        report = reconcile(ledger, start, end)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        sys.stdout.write(report.to_text())
    return 3 if any(line.status == "gap" for line in report.lines) else 0


def cmd_prices(args: argparse.Namespace) -> int:
    """Record a price sheet (YAML or JSON) effective from --since (default now)."""
    sheet = PriceSheet.from_dict(yaml.safe_load(Path(args.file).read_text()) or {})
    since = parse_bound(args.since, "since") if args.since else datetime.now(UTC)
    with _open(args, create=True) as ledger:
        ledger.set_prices(sheet, since)
    print(f"prices in {sheet.currency} effective from {since.isoformat()}")
    return 0


def cmd_owners(args: argparse.Namespace) -> int:
    """Replace the model registry from a YAML/JSON mapping ``namespace/model: account``."""
    data = yaml.safe_load(Path(args.file).read_text()) or {}
    if not isinstance(data, dict):
        raise LedgerError("owners", "must be a mapping of namespace/model to account")
    owners: dict[tuple[str, str], str] = {}
    for key, account in data.items():
        ns, sep, model = str(key).partition("/")
        if not sep or not ns or not model or not isinstance(account, str) or not account:
            raise LedgerError(f"owners.{key}", "needs namespace/model: account")
        owners[(ns, model)] = account
    with _open(args, create=True) as ledger:
        ledger.set_owners(owners)
    print(f"{len(owners)} models registered")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """Print quarantined events (kept, not billed) as JSON lines."""
    with _open(args) as ledger:
        for item in ledger.quarantined(limit=args.limit):
            print(json.dumps(item, sort_keys=True))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    """Bill quarantined events (all, or --id ones) and drop them from the quarantine."""
    with _open(args) as ledger:
        result = ledger.release_quarantined(args.id or None)
    print(f"billed {len(result.accepted)}, duplicates {len(result.duplicates)}")
    return 0


def cmd_usage_token(args: argparse.Namespace) -> int:
    """Write a model's write credential to --output (mode 0600); never printed."""
    key = read_secret_file(args.ingest_key_file, "ingest-key-file").encode()
    token = mint_write_token(key, args.namespace, args.model)
    out = Path(args.output)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    print(f"wrote the write credential of {args.namespace}/{args.model} to {out}",
          file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the billing HTTP endpoint until interrupted (credentials from files only)."""
    token = read_secret_file(args.token_file, "token-file")
    write_auth = None
    if args.ingest_key_file:
        # re-read on change (a rotated Secret); the previous key's tokens stay valid a while
        write_auth = file_write_auth(IngestKeyFile(args.ingest_key_file, field="ingest-key-file"),
                                     allow_wildcard=args.dev_wildcard_ingest)
    else:
        print("warning: no --ingest-key-file: nothing can ingest usage", file=sys.stderr)
    policy = IngestPolicy(max_future_s=args.max_future_seconds,
                          max_age_s=args.max_event_age_days * 86_400.0 or None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _open(args, create=True) as ledger:
        server = start_billing_server(ledger, args.host, args.port, token,
                                      write_auth=write_auth, policy=policy)
        print(f"billing endpoint on {server.url}", file=sys.stderr, flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


def _handle(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (LedgerError, PriceError, CredentialError, OSError, yaml.YAMLError,
                ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return run


def register(subparsers: Any) -> None:
    """Add the ``billing`` command group to the deepserve CLI."""
    group = subparsers.add_parser("billing", help="usage ledger, billing exports, reconciliation")
    sub = group.add_subparsers(dest="billing_command", required=True)

    def common(p: argparse.ArgumentParser, window: bool = True) -> None:
        p.add_argument("--ledger", help=f"ledger file (default $DEEPSERVE_LEDGER or {DEFAULT_LEDGER})")
        if window:
            p.add_argument("--from", dest="from_", required=True,
                           help="inclusive start, ISO-8601 UTC (2026-11-01 or 2026-11-01T10:00Z)")
            p.add_argument("--to", required=True, help="exclusive end, ISO-8601 UTC")

    p = sub.add_parser("export", help="export usage as FOCUS 1.2 CSV, CloudEvents or CSV")
    common(p)
    p.add_argument("--account", help="only this model owner's account (its models, its GPU-hours)")
    p.add_argument("--tenant", help="only this caller's usage (what it is billed)")
    p.add_argument("--format", choices=FORMATS, default="focus")
    p.add_argument("--output", "-o", help="file to write atomically (default stdout)")
    p.add_argument("--metadata", help="with --format focus on stdout: write metadata JSON here")
    p.set_defaults(func=_handle(cmd_export))

    p = sub.add_parser("ingest", help="ingest usage events from JSON lines (all or nothing)")
    common(p, window=False)
    p.add_argument("files", nargs="+", help="files of events ('-' for stdin)")
    p.set_defaults(func=_handle(cmd_ingest))

    p = sub.add_parser("report", help="usage and cost per account and model")
    common(p)
    p.add_argument("--account", help="only this model owner's account")
    p.add_argument("--tenant", help="only this caller's usage")
    p.set_defaults(func=_handle(cmd_report))

    p = sub.add_parser("spend", help="a tenant's spend in one month (the gateway's cap)")
    common(p, window=False)
    p.add_argument("--tenant", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    p.set_defaults(func=_handle(cmd_spend))

    p = sub.add_parser("reconcile", help="usage events vs Triton counters, with the gap")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_handle(cmd_reconcile))

    p = sub.add_parser("prices", help="record a price sheet (YAML/JSON)")
    common(p, window=False)
    p.add_argument("file")
    p.add_argument("--since", help="effective from (default now)")
    p.set_defaults(func=_handle(cmd_prices))

    p = sub.add_parser("owners", help="register models and their owning accounts (YAML/JSON)")
    common(p, window=False)
    p.add_argument("file", help="mapping namespace/model: account")
    p.set_defaults(func=_handle(cmd_owners))

    p = sub.add_parser("quarantine", help="list quarantined usage events (not billed)")
    common(p, window=False)
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(func=_handle(cmd_quarantine))

    p = sub.add_parser("release", help="bill quarantined usage events")
    common(p, window=False)
    p.add_argument("--id", action="append", help="only this event id (repeatable)")
    p.set_defaults(func=_handle(cmd_release))

    p = sub.add_parser("usage-token", help="mint a model's usage write credential into a file")
    p.add_argument("--ingest-key-file", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--model", required=True, help="model name ('*': every model, dev only)")
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=_handle(cmd_usage_token))

    p = sub.add_parser("serve", help="run the authenticated billing HTTP endpoint")
    common(p, window=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--token-file", required=True, help="the read credential (exports, spend)")
    p.add_argument("--ingest-key-file",
                   help="key of the per-model write credentials (credentials.py)")
    p.add_argument("--dev-wildcard-ingest", action="store_true",
                   help="dev stacks only: accept namespace-wide write credentials (model '*')")
    p.add_argument("--max-future-seconds", type=float, default=300.0,
                   help="quarantine events ending later than this after the server's clock")
    p.add_argument("--max-event-age-days", type=float, default=400.0,
                   help="quarantine events older than this (0: no bound)")
    p.set_defaults(func=_handle(cmd_serve))
