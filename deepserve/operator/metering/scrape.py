"""Scraping Triton's Prometheus endpoint (``:8002/metrics``) and turning counters into
deltas that survive counter resets.

Parsing uses ``prometheus_client.parser.text_string_to_metric_families``. Metric names
are those of the Triton metrics documentation
(https://github.com/triton-inference-server/server/blob/main/docs/user_guide/metrics.md)
plus deepserve's own token counters, which the engine's Python backend exports as
custom metrics (``deepserve_prompt_tokens_total``, ``deepserve_generated_tokens_total``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

#: Counter sample name (``_total`` stripped) -> the ledger's metric name.
COUNTERS: dict[str, str] = {
    "nv_inference_request_success": "requests_success",
    "nv_inference_request_failure": "requests_failure",
    "nv_inference_count": "inference_count",
    "nv_inference_exec_count": "exec_count",
    "nv_inference_request_duration_us": "request_duration_us",
    "nv_inference_queue_duration_us": "queue_duration_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_duration_us",
    "deepserve_prompt_tokens": "prompt_tokens",
    "deepserve_generated_tokens": "generated_tokens",
}
#: Gauge sample name -> monitoring name.
GAUGES: dict[str, str] = {
    "nv_gpu_utilization": "gpu_utilization",
    "nv_inference_pending_request_count": "pending_requests",
}

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class ScrapeError(OSError):
    """A metrics endpoint could not be fetched or parsed."""


@dataclasses.dataclass(frozen=True)
class MetricsSample:
    """Counters and gauges of one scrape, keyed by (metric, sorted labels)."""

    counters: Mapping[SeriesKey, float]
    gauges: Mapping[SeriesKey, float]

    def counter_totals(self) -> dict[str, float]:
        """Sum each known counter over all its label sets (ledger metric names)."""
        out: dict[str, float] = {}
        for (name, _labels), value in self.counters.items():
            out[COUNTERS[name]] = out.get(COUNTERS[name], 0.0) + value
        return out

    def gauge_mean(self, metric: str) -> float | None:
        """Mean of one gauge (monitoring name) over its label sets, None if absent."""
        values = [v for (name, _), v in self.gauges.items() if GAUGES[name] == metric]
        return sum(values) / len(values) if values else None


_KNOWN = frozenset(COUNTERS) | frozenset(GAUGES)


def _known_lines(text: str) -> tuple[list[str], list[str]]:
    """``(TYPE lines, sample lines)`` of the metrics we use.

    Triton exposes many more families (cache, CPU, energy, per-GPU power, ...); dropping
    what we never read before parsing is the first half of keeping a 1,000-pod scrape cycle
    within a second (the memo of :func:`parse_metrics_text` is the second).
    """
    types: list[str] = []
    samples: list[str] = []
    for line in text.splitlines():
        if not line:
            continue
        if line[0] == "#":
            if line.startswith("# TYPE ") and line[7:].split(" ", 1)[0].removesuffix("_total") in _KNOWN:
                types.append(line)
            continue
        if line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total") in _KNOWN:
            samples.append(line)
    return types, samples


# What prometheus_client's parser made of each series line (everything but the value), per
# set of TYPE lines: ``series text -> ("c" | "g", key)``. Triton repeats the same series
# every scrape with new values, so after a pod's first scrape a line costs a dict lookup and
# a float() instead of a pass through the pure-Python parser. Lines never seen go through
# the parser (which validates them) and are remembered. Bounded: cleared when it grows.
_MEMO: dict[tuple[str, ...], dict[str, tuple[str, SeriesKey] | None]] = {}
_MEMO_LIMIT = 500_000
_memo_size = 0


def _series_and_value(line: str) -> tuple[str, str]:
    """Split a sample line into its series text (name and labels) and its value text."""
    if "}" in line:
        i = line.rindex("}") + 1  # values and timestamps never contain "}"
        series, rest = line[:i], line[i:]
    else:
        series, _, rest = line.partition(" ")
    value = rest.split(None, 1)
    return series, value[0] if value else ""


def _meaning(family: Any, sample: Any) -> tuple[str, SeriesKey] | None:
    """``("c" | "g", key)`` for a parsed sample of a counter or gauge we use, else None."""
    name = sample.name.removesuffix("_total")
    key = (name, tuple(sorted(sample.labels.items())))
    if name in COUNTERS and family.type in ("counter", "untyped", "unknown"):
        return "c", key
    return ("g", key) if name in GAUGES else None


def _parse_line(type_text: str, line: str) -> tuple[str, tuple[str, SeriesKey] | None, float]:
    """Parse one sample line with prometheus_client's parser (``type_text``: its family's TYPE line)."""
    for family in text_string_to_metric_families(type_text + line + "\n"):
        for sample in family.samples:
            return line, _meaning(family, sample), float(sample.value)
    return line, None, 0.0


def parse_metrics_text_uncached(text: str) -> MetricsSample:
    """The reference reading: the whole text through prometheus_client's parser, no memo."""
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                meaning = _meaning(family, sample)
                if meaning is not None:
                    (counters if meaning[0] == "c" else gauges)[meaning[1]] = float(sample.value)
    except ValueError as err:
        raise ScrapeError(f"unparseable metrics text: {err}") from err
    return MetricsSample(counters, gauges)


def parse_metrics_text(text: str) -> MetricsSample:
    """Parse Prometheus text exposition into a :class:`MetricsSample` (known metrics only).

    Every series line is read by prometheus_client's parser the first time it is seen;
    repeats reuse that reading and only parse the value. Raises ScrapeError if the text is
    not valid exposition format.
    """
    global _memo_size
    types, lines = _known_lines(text)
    sig = tuple(types)
    memo = _MEMO.get(sig)
    if memo is None:
        if _memo_size > _MEMO_LIMIT:
            _MEMO.clear()
            _memo_size = 0
        memo = _MEMO[sig] = {}
    type_of = {t.split(" ", 3)[2]: t + "\n" for t in types}
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    try:
        for line in lines:
            series, value_text = _series_and_value(line)
            if series in memo:
                meaning = memo[series]
                value = float(value_text)
            else:
                name = series.split("{", 1)[0]
                type_text = type_of.get(name) or type_of.get(name.removesuffix("_total"), "")
                _, meaning, value = _parse_line(type_text, line)
                memo[series] = meaning
                _memo_size += 1
            if meaning is not None:
                (counters if meaning[0] == "c" else gauges)[meaning[1]] = value
    except ValueError as err:
        raise ScrapeError(f"unparseable metrics text: {err}") from err
    return MetricsSample(counters, gauges)


def _check_response(url: str, status: int, body: bytes) -> MetricsSample:
    if status != 200:
        raise ScrapeError(f"{url}: HTTP {status}")
    return parse_metrics_text(body.decode("utf-8", errors="replace"))


def scrape_pod_metrics(url: str, timeout: float = 2.0) -> MetricsSample:
    """Fetch and parse one metrics endpoint (e.g. ``http://10.0.0.5:8002/metrics``).

    Raises ScrapeError on network errors, non-200 answers or unparseable text.
    """
    parts = urlsplit(url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else \
        http.client.HTTPConnection
    conn = conn_type(parts.hostname or "localhost", parts.port, timeout=timeout)
    try:
        conn.request("GET", (parts.path or "/metrics") + (f"?{parts.query}" if parts.query
                                                          else ""))
        response = conn.getresponse()
        status, body = response.status, response.read()
    except (OSError, http.client.HTTPException) as err:
        raise ScrapeError(f"{url}: {err}") from err
    finally:
        conn.close()
    return _check_response(url, status, body)


async def _fetch_http(url: str, timeout: float) -> tuple[int, bytes]:
    """One plain-HTTP GET as HTTP/1.0 (no chunking, the server closes after the body)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 80
    path = (parts.path or "/metrics") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nAccept: text/plain\r\n"
                     f"User-Agent: deepserve-metering\r\n\r\n".encode())
        raw = await reader.read(-1)
    finally:
        writer.close()
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        raise ScrapeError(f"{url}: not an HTTP response")
    length = next((int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")[1:]
                   if h.lower().startswith(b"content-length:")), None)
    if length is not None and len(body) < length:
        raise ScrapeError(f"{url}: body cut short ({len(body)} of {length} bytes)")
    return int(status_line[1]), body


async def _scrape_all(urls: list[str], timeout: float, workers: int) -> list[MetricsSample | ScrapeError]:
    gate = asyncio.Semaphore(workers)

    async def one(url: str) -> MetricsSample | ScrapeError:
        async with gate:
            try:
                if url.startswith("https:"):
                    sample = await asyncio.to_thread(scrape_pod_metrics, url, timeout)
                else:
                    status, body = await asyncio.wait_for(_fetch_http(url, timeout), timeout)
                    sample = _check_response(url, status, body)
            except ScrapeError as err:
                log.warning("scrape failed: %s", err)
                return err
            except (OSError, TimeoutError, ValueError) as err:
                why = str(err) or type(err).__name__
                log.warning("scrape failed: %s: %s", url, why)
                return ScrapeError(f"{url}: {why}")
            return sample

    return list(await asyncio.gather(*(one(u) for u in urls)))


def scrape_many(urls: Iterable[str], *, timeout: float = 2.0,
                workers: int = 256) -> dict[str, MetricsSample | ScrapeError]:
    """Scrape many endpoints concurrently; failures come back as ScrapeError values.

    One event loop does the I/O (``workers`` connections at a time): a thousand blocking
    requests on threads cost more in thread switches and GIL hand-offs than the requests.
    Safe to call from any thread, including one that runs an event loop.
    """
    url_list = list(urls)
    if not url_list:
        return {}
    coro = _scrape_all(url_list, timeout, max(1, workers))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        results = asyncio.run(coro)
    else:  # called from a coroutine's thread: run the loop on a helper thread
        with ThreadPoolExecutor(max_workers=1) as pool:
            results = pool.submit(asyncio.run, coro).result()
    return dict(zip(url_list, results, strict=True))


def counter_delta(previous: float | None, current: float) -> float:
    """Increase of a counter since ``previous``.

    A value lower than before means the counter was reset (pod or model restart) and
    counted up again from zero, so the whole current value is new. With no previous
    value the series is new (a fresh pod starts at zero): the whole value counts.
    """
    if previous is None or current < previous:
        return current
    return current - previous


def series_id(key: SeriesKey) -> str:
    """Stable text form of a series key (used to persist counter state)."""
    name, labels = key
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def sample_deltas(previous: Mapping[str, float], sample: MetricsSample
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Deltas per ledger metric since ``previous`` (series id -> last value).

    Returns ``(deltas, new_state)``; ``new_state`` replaces ``previous``.
    """
    deltas: dict[str, float] = {}
    state: dict[str, float] = {}
    for key, value in sample.counters.items():
        sid = series_id(key)
        metric = COUNTERS[key[0]]
        deltas[metric] = deltas.get(metric, 0.0) + counter_delta(previous.get(sid), value)
        state[sid] = value
    return deltas, state


class CounterTracker:
    """In-memory counter state per pod, for callers that do not use the ledger."""

    def __init__(self) -> None:
        self._state: dict[str, dict[str, float]] = {}

    def update(self, pod_uid: str, sample: MetricsSample) -> dict[str, float]:
        """Return deltas per ledger metric since the pod's last sample."""
        deltas, self._state[pod_uid] = sample_deltas(self._state.get(pod_uid, {}), sample)
        return deltas

    def forget(self, pod_uid: str) -> None:
        """Drop a pod's state (after its final scrape)."""
        self._state.pop(pod_uid, None)
