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
        status = 200 if self.path == "/metrics" else 500
        body = TEXT.encode() if status == 200 else b"boom"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
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
