"""``deepserve billing``: export, ingest, report, reconcile, prices, serve.

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
from deepserve.operator.metering.focus import focus_metadata_json, focus_rows

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
            n = export_to_file(ledger, args.format, start, end, args.output, args.account)
            extra = f" (+ {args.output}.metadata.json)" if args.format == "focus" else ""
            print(f"wrote {n} records to {args.output}{extra}", file=sys.stderr)
        else:
            n = export(ledger, args.format, start, end, sys.stdout, args.account)
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
        for row in focus_rows(ledger, start, end, args.account):
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the billing HTTP endpoint until interrupted."""
    token = Path(args.token_file).read_text().strip() if args.token_file else \
        os.environ.get("DEEPSERVE_BILLING_TOKEN", "")
    if not token:
        raise LedgerError("token", "give --token-file or $DEEPSERVE_BILLING_TOKEN")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _open(args, create=True) as ledger:
        server = start_billing_server(ledger, args.host, args.port, token)
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
        except (LedgerError, PriceError, OSError, yaml.YAMLError) as err:
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
    p.add_argument("--account", help="only this billing account")
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
    p.add_argument("--account")
    p.set_defaults(func=_handle(cmd_report))

    p = sub.add_parser("reconcile", help="usage events vs Triton counters, with the gap")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_handle(cmd_reconcile))

    p = sub.add_parser("prices", help="record a price sheet (YAML/JSON)")
    common(p, window=False)
    p.add_argument("file")
    p.add_argument("--since", help="effective from (default now)")
    p.set_defaults(func=_handle(cmd_prices))

    p = sub.add_parser("serve", help="run the authenticated billing HTTP endpoint")
    common(p, window=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--token-file")
    p.set_defaults(func=_handle(cmd_serve))
