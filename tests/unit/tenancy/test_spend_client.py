"""HttpSpendSource against an HTTP server that follows the spend endpoint's contract."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from deepserve.operator.tenancy.spend_client import UNKNOWN_SPEND, HttpSpendSource

pytestmark = pytest.mark.unit
TOKEN = "read-token-for-tests"
NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


class Billing(ThreadingHTTPServer):
    """`GET /v1/tenants/<t>/spend?month=YYYY-MM` with a bearer token, amounts set by the test."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.amounts: dict[tuple[str, str], str] = {}
        self.calls = 0
        self.delay_s = 0.0
        self.status = 200

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out on purpose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Billing

    def do_GET(self) -> None:
        self.server.calls += 1
        time.sleep(self.server.delay_s)
        parts = urlsplit(self.path)
        tenant = unquote(parts.path.removeprefix("/v1/tenants/").removesuffix("/spend"))
        month = parse_qs(parts.query).get("month", [""])[0]
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            status, body = 401, {"error": "missing or wrong bearer token"}
        elif self.server.status != 200:
            status, body = self.server.status, {"error": "broken"}
        else:
            status, body = 200, {"tenant": tenant, "month": month, "currency": "USD",
                                 "amount": self.server.amounts.get((tenant, month), "0")}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def billing() -> Iterator[Billing]:
    server = Billing()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_reads_the_amount_exactly_and_caches(billing: Billing) -> None:
    billing.amounts[("team a", "2026-12")] = "12.345678"
    clock = [0.0]
    source = HttpSpendSource(billing.url, TOKEN, now=lambda: NOW, monotonic=lambda: clock[0])
    assert source.month_to_date("team a") == Decimal("12.345678")
    billing.amounts[("team a", "2026-12")] = "20"
    clock[0] = 4.9
    assert source.month_to_date("team a") == Decimal("12.345678") and billing.calls == 1
    clock[0] = 5.0  # stale: the old value now, a refresh in the background
    assert source.month_to_date("team a") == Decimal("12.345678")
    deadline = time.monotonic() + 2
    while source.month_to_date("team a") != Decimal("20"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    source.close()


def test_fails_closed_when_billing_is_unknown(billing: Billing) -> None:
    clock = [0.0]
    wrong = HttpSpendSource(billing.url, "wrong-token", now=lambda: NOW)
    assert wrong.month_to_date("acme") == UNKNOWN_SPEND  # 401
    source = HttpSpendSource(billing.url, TOKEN, now=lambda: NOW, monotonic=lambda: clock[0],
                             max_stale_s=30)
    assert source.month_to_date("acme") == Decimal(0)
    billing.status = 500
    clock[0] = 29
    assert source.month_to_date("acme") == Decimal(0)
    clock[0] = 31
    assert source.month_to_date("acme") == UNKNOWN_SPEND
    billing.status = 200  # back: a value too old to serve is fetched at once, not refused
    billing.amounts[("acme", "2026-12")] = "3"
    clock[0] = 100
    assert source.month_to_date("acme") == Decimal(3)
    gone = HttpSpendSource("http://127.0.0.1:1", TOKEN, now=lambda: NOW)
    assert gone.month_to_date("acme") == UNKNOWN_SPEND
    for s in (wrong, source, gone):
        s.close()


def test_first_fetch_is_bounded_by_the_timeout(billing: Billing) -> None:
    billing.delay_s = 1.0
    source = HttpSpendSource(billing.url, TOKEN, timeout_s=0.2, now=lambda: NOW)
    start = time.monotonic()
    assert source.month_to_date("slow") == UNKNOWN_SPEND
    assert time.monotonic() - start < 0.6
    source.close()


def test_a_cache_longer_than_5s_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        HttpSpendSource("http://x", TOKEN, ttl_s=10)
