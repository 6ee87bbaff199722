"""The operator's probe endpoint (``--health-address HOST:PORT``), answered in every role.

kopf's own liveness endpoint (``--liveness``) exists only while kopf runs, so a standby
replica under ``--leader-elect`` has none, and a liveness probe on it would restart every
standby. This one is served from process start by a small thread:

- ``GET /healthz`` (liveness): 200 while the replica's Lease loop has tried to reach the API
  server recently (it is not stuck), whatever its role; 503 otherwise. An API server that is
  away does not fail it: restarting the operator would not bring the API server back.
- ``GET /readyz`` (readiness): 200 once the process serves; a standby is ready too (it has
  nothing to serve but its probes, and the chart has no Service selecting operator pods).

Both answer a small JSON document: the role (leader, standby, or the shards held).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)
Report = tuple[bool, dict[str, Any]]


def loop_alive(last_attempt: float, stale_s: float, detail: dict[str, Any],
               clock: Callable[[], float] = time.monotonic) -> Report:
    """Healthy when the Lease loop's last attempt is at most ``stale_s`` old (or it has not
    started yet: the first attempt is made at once)."""
    age = clock() - last_attempt
    ok = last_attempt == float("-inf") or age <= stale_s
    return ok, {**detail, "leaseLoopAgeSeconds": None if last_attempt == float("-inf") else round(age, 1)}


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` for every address); exits naming the flag when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"--health-address {address!r}: expected HOST:PORT, e.g. 0.0.0.0:8081")
    return host.strip("[]") or "0.0.0.0", int(port)


class HealthServer:
    """A ThreadingHTTPServer on a daemon thread answering /healthz and /readyz."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @classmethod
    def start(cls, address: str, report: Callable[[], Report]) -> HealthServer:
        host, port = parse_address(address)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, detail = report()
                elif path == "/readyz":
                    ok, detail = True, report()[1]
                else:
                    self.send_error(404)
                    return
                body = json.dumps({"ok": ok, **detail}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not logged
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="health", daemon=True)
        thread.start()
        log.info("health endpoint on %s:%d (/healthz, /readyz)", host, server.server_address[1])
        return cls(server, thread)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
