"""The operator's authenticated billing HTTP endpoint (stdlib ``http.server``).

Every path except ``GET /healthz`` needs ``Authorization: Bearer <token>``: ingest a
model's write credential, everything else the read credential (credentials.py); the
other one is answered 403, an unknown one 401.

==========================  =====================================================
``POST /v1/usage/events``   (alias ``/v1/usage``) body ``{"events": [...]}`` (wire form of
                            ``deepserve.engine.usage.UsageEvent``). 200 with
                            ``{"accepted", "duplicates", "quarantined"}`` (id lists)
                            once the batch is durable; 400 ``{"error", "field",
                            "index", "event_id"}`` for a bad event, 403 for an event
                            of another model than the credential's (nothing of the
                            batch is written); 503 when the ledger cannot write (disk
                            full): the shipper retries.
``GET /v1/usage/quarantine`` quarantined events (kept, not billed; trust.py)
``GET /v1/billing/export``  ``?from=&to=&account=&tenant=&format=focus|cloudevents|
                            csv|focus-metadata`` (``tenant``: only that caller's usage)
``GET /v1/tenants/<t>/spend`` ``?month=YYYY-MM`` -> ``{"tenant", "month", "currency",
                            "amount"}`` (amount a decimal string; spend.py)
``GET /v1/billing/reconcile`` ``?from=&to=`` JSON reconciliation report
``GET /v1/models/summary``  ``?namespace=&model=`` live figures (JSON)
``GET /metrics``            Prometheus text of the monitor's registry
``GET /healthz``            200 ``ok`` when the ledger answers
==========================  =====================================================
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import sqlite3
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from deepserve.operator.metering.credentials import WriteAuth
from deepserve.operator.metering.exports import FORMATS, export
from deepserve.operator.metering.focus import focus_metadata_json
from deepserve.operator.metering.ledger import LedgerError, UsageLedger, parse_bound
from deepserve.operator.metering.monitoring import ModelMonitor
from deepserve.operator.metering.reconcile import reconcile
from deepserve.operator.metering.spend import tenant_spend
from deepserve.operator.metering.trust import CredentialRefused, IngestPolicy, IngestTrust

log = logging.getLogger(__name__)
MAX_BODY = 32 << 20
#: Where usage batches may be POSTed (``/v1/usage`` is an alias of ``/v1/usage/events``).
INGEST_PATHS = ("/v1/usage/events", "/v1/usage")
_CONTENT_TYPES = {"focus": "text/csv; charset=utf-8", "csv": "text/csv; charset=utf-8",
                  "cloudevents": "application/x-ndjson", "focus-metadata": "application/json"}


class BillingServer(ThreadingHTTPServer):
    """The HTTP server; use :func:`start_billing_server` to run it in a thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], ledger: UsageLedger, token: str,
                 monitor: ModelMonitor, write_auth: WriteAuth | None = None,
                 policy: IngestPolicy | None = None) -> None:
        if not token:
            raise ValueError("token: a bearer token is required")
        super().__init__(address, _Handler)
        self.ledger, self.token, self.monitor = ledger, token, monitor
        self.write_auth, self.policy = write_auth, policy or IngestPolicy()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8090``."""
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"

    def stop(self) -> None:
        """Stop serving and close the socket (the ledger stays open)."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: BillingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("billing http: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload, sort_keys=True).encode() + b"\n",
                   "application/json")

    def _bearer(self) -> str:
        header = self.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") else ""

    def _is_reader(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.server.token.encode())

    def _authorized(self) -> bool:
        """The read credential (exports, spend, ...); a write credential gets 403."""
        given = self._bearer()
        if self._is_reader(given):
            return True
        auth = self.server.write_auth
        if given and auth is not None and auth(given) is not None:
            self._json(HTTPStatus.FORBIDDEN, {"error": "a write credential cannot read"})
        else:
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
        return False

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        given = self._bearer()
        auth = self.server.write_auth
        scope = auth(given) if given and auth is not None else None
        if scope is None:
            if given and self._is_reader(given):
                self._json(HTTPStatus.FORBIDDEN, {"error": "the read credential cannot ingest"})
            else:
                self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong write credential"})
            return
        if path not in INGEST_PATHS:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._json(HTTPStatus.BAD_REQUEST if length <= 0 else HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"body must be 1..{MAX_BODY} bytes", "field": "body"})
            return
        try:
            result = self.server.ledger.ingest_json(self.rfile.read(length),
                                                    IngestTrust(scope, self.server.policy))
        except CredentialRefused as err:
            self.server.monitor.rejected.inc()
            self._json(HTTPStatus.FORBIDDEN, {"error": str(err), "field": err.field,
                                              "index": err.index, "event_id": err.event_id})
            return
        except (ValueError, KeyError) as err:  # JSONDecodeError and LedgerError are ValueErrors
            self.server.monitor.rejected.inc()
            payload: dict[str, Any] = {"error": str(err), "field": "body"}
            if isinstance(err, LedgerError):
                payload.update(field=err.field, index=err.index, event_id=err.event_id)
            elif isinstance(err, KeyError):
                payload["field"] = "events"
            self._json(HTTPStatus.BAD_REQUEST, payload)
            return
        except sqlite3.Error as err:  # e.g. disk full: nothing was written, retry later
            log.error("usage ingest failed, answering 503: %s", err)
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the ledger cannot write now"})
            return
        self.server.monitor.duplicates.inc(len(result.duplicates))
        self._json(HTTPStatus.OK, {"accepted": result.accepted, "duplicates": result.duplicates,
                                   "quarantined": result.quarantined})

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/healthz":
            self.server.ledger.accounts()  # raises if the database is unusable
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")
            return
        if not self._authorized():
            return
        try:
            if parts.path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(self.server.monitor.registry),
                           CONTENT_TYPE_LATEST)
            elif parts.path == "/v1/billing/export":
                self._export(query)
            elif parts.path == "/v1/billing/reconcile":
                report = reconcile(self.server.ledger, parse_bound(query.get("from", ""), "from"),
                                   parse_bound(query.get("to", ""), "to"))
                self._json(HTTPStatus.OK, report.to_dict())
            elif parts.path.startswith("/v1/tenants/") and parts.path.endswith("/spend"):
                tenant = unquote(parts.path[len("/v1/tenants/"):-len("/spend")])
                self._json(HTTPStatus.OK, tenant_spend(self.server.ledger, tenant,
                                                       query.get("month", "")).to_dict())
            elif parts.path == "/v1/usage/quarantine":
                self._json(HTTPStatus.OK, {"count": self.server.ledger.quarantine_count(),
                                           "events": self.server.ledger.quarantined()})
            elif parts.path == "/v1/models/summary":
                self._json(HTTPStatus.OK, self.server.monitor.summary(
                    query.get("namespace", ""), query.get("model", "")))
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: GET {parts.path}"})
        except LedgerError as err:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err), "field": err.field})

    def _export(self, query: dict[str, str]) -> None:
        fmt = query.get("format", "focus")
        if fmt == "focus-metadata":
            self._send(HTTPStatus.OK, focus_metadata_json().encode(), _CONTENT_TYPES[fmt])
            return
        if fmt not in FORMATS:
            raise LedgerError("format", f"must be one of {', '.join(FORMATS)} or focus-metadata")
        start = parse_bound(query.get("from", ""), "from")
        end = parse_bound(query.get("to", ""), "to")
        buffer = io.StringIO()
        export(self.server.ledger, fmt, start, end, buffer, query.get("account") or None,
               query.get("tenant") or None)
        self._send(HTTPStatus.OK, buffer.getvalue().encode(), _CONTENT_TYPES[fmt])


def start_billing_server(ledger: UsageLedger, host: str = "127.0.0.1", port: int = 0,
                         token: str = "", monitor: ModelMonitor | None = None, *,
                         write_auth: WriteAuth | None = None,
                         policy: IngestPolicy | None = None) -> BillingServer:
    """Serve the billing endpoint in a daemon thread; returns the running server.

    ``token`` is the read credential; ``write_auth`` checks write credentials (none:
    nothing can ingest); ``policy`` bounds clock skew (trust.py).

    ``port=0`` picks a free port (see ``server.url``). The monitor (created if not given)
    is registered as a ledger listener so every accepted event feeds live figures.
    """
    monitor = monitor or ModelMonitor()
    ledger.add_listener(monitor.observe_events)
    server = BillingServer((host, port), ledger, token, monitor, write_auth, policy)
    server._thread = threading.Thread(target=server.serve_forever, name="billing-http",
                                      daemon=True)
    server._thread.start()
    log.info("billing endpoint listening on %s", server.url)
    return server
