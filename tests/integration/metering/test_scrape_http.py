"""Scraping over real loopback HTTP: success, HTTP errors, refused connections."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deepserve.operator.metering import ScrapeError, scrape_many, scrape_pod_metrics

pytestmark = pytest.mark.integration

TEXT = ("# TYPE nv_inference_request_success counter\n"
        'nv_inference_request_success{model="chat",version="1"} 42\n'
        "# TYPE nv_gpu_utilization gauge\n"
        'nv_gpu_utilization{gpu_uuid="GPU-0"} 0.5\n')


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path.split("?")[0] == "/metrics" else 500
        body = TEXT.encode() if status == 200 else b"boom"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def base_url() -> Iterator[str]:
    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops SYNs when a cycle connects at once

    server = Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scrape_success_and_failures(base_url: str) -> None:
    sample = scrape_pod_metrics(base_url + "/metrics")
    assert sample.counter_totals() == {"requests_success": 42.0}
    assert sample.gauge_mean("gpu_utilization") == 0.5
    with pytest.raises(ScrapeError, match="HTTP 500"):
        scrape_pod_metrics(base_url + "/broken")
    with pytest.raises(ScrapeError):
        scrape_pod_metrics(f"http://127.0.0.1:{_closed_port()}/metrics", timeout=1)
    results = scrape_many([base_url + "/metrics", base_url + "/broken"], timeout=2)
    assert not isinstance(results[base_url + "/metrics"], Exception)
    assert isinstance(results[base_url + "/broken"], ScrapeError)


def test_scrape_many_reports_each_failure_and_keeps_the_rest(base_url: str) -> None:
    import asyncio
    import time

    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    short = socket.socket()  # answers with a body shorter than its Content-Length
    short.bind(("127.0.0.1", 0))
    short.listen(8)

    def cut_short() -> None:
        conn, _ = short.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 500\r\n\r\n# TYPE nv_inference_count counter\n")
        conn.close()

    threading.Thread(target=cut_short, daemon=True).start()
    urls = {"ok": base_url + "/metrics", "http500": base_url + "/broken",
            "refused": f"http://127.0.0.1:{_closed_port()}/metrics",
            "silent": f"http://127.0.0.1:{silent.getsockname()[1]}/metrics",
            "short": f"http://127.0.0.1:{short.getsockname()[1]}/metrics"}
    try:
        t = time.monotonic()
        more = [f"{base_url}/metrics?again={i}" for i in range(20)]
        results = scrape_many(list(urls.values()) + more, timeout=2.0)
        assert time.monotonic() - t < 8  # the silent endpoint costs its timeout, not more
        assert results[urls["ok"]].counter_totals() == {"requests_success": 42.0}  # type: ignore[union-attr]
        assert not [u for u in more if isinstance(results[u], Exception)], [results[u] for u in more]
        assert "HTTP 500" in str(results[urls["http500"]])
        for name in ("refused", "silent", "short"):
            assert isinstance(results[urls[name]], ScrapeError), (name, results[urls[name]])
        assert "cut short" in str(results[urls["short"]])

        async def from_a_coroutine() -> object:  # as the operator's async daemons call it
            return scrape_many([urls["ok"]], timeout=1.0)[urls["ok"]]

        assert not isinstance(asyncio.run(from_a_coroutine()), Exception)
    finally:
        silent.close()
        short.close()
