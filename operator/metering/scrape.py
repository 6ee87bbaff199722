"""Scraping Triton's Prometheus endpoint (``:8002/metrics``) and turning counters into
deltas that survive counter resets.

Parsing uses ``prometheus_client.parser.text_string_to_metric_families``. Metric names
are those of the Triton metrics documentation
(https://github.com/triton-inference-server/server/blob/main/docs/user_guide/metrics.md)
plus deepserve's own token counters, which the engine's Python backend exports as
custom metrics (``deepserve_prompt_tokens_total``, ``deepserve_generated_tokens_total``).
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
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


def _known_lines(text: str) -> str:
    """Keep only samples and TYPE lines of metrics we use.

    Triton exposes many more families (cache, CPU, energy, per-GPU power, ...); the
    prometheus_client parser is pure Python, so dropping what we never read before
    parsing is what keeps a 1,000-pod scrape cycle within a second.
    """
    keep = []
    for line in text.splitlines():
        if not line:
            continue
        if line[0] == "#":
            if line.startswith("# TYPE "):
                name = line[7:].split(" ", 1)[0]
            else:
                continue
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.removesuffix("_total") in _KNOWN:
            keep.append(line)
    keep.append("")
    return "\n".join(keep)


def parse_metrics_text(text: str) -> MetricsSample:
    """Parse Prometheus text exposition into a :class:`MetricsSample` (known metrics only).

    Raises ScrapeError if the text is not valid exposition format.
    """
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    try:
        for family in text_string_to_metric_families(_known_lines(text)):
            for sample in family.samples:
                name = sample.name.removesuffix("_total")
                key = (name, tuple(sorted(sample.labels.items())))
                if name in COUNTERS and family.type in ("counter", "untyped", "unknown"):
                    counters[key] = float(sample.value)
                elif name in GAUGES:
                    gauges[key] = float(sample.value)
    except ValueError as err:
        raise ScrapeError(f"unparseable metrics text: {err}") from err
    return MetricsSample(counters, gauges)


def scrape_pod_metrics(url: str, timeout: float = 2.0) -> MetricsSample:
    """Fetch and parse one metrics endpoint (e.g. ``http://10.0.0.5:8002/metrics``).

    Raises ScrapeError on network errors, non-200 answers or unparseable text.
    """
    parts = urlsplit(url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else \
        http.client.HTTPConnection
    # http.client directly: urllib's opener machinery costs more than the request itself
    # when a cycle scrapes a thousand pods.
    conn = conn_type(parts.hostname or "localhost", parts.port, timeout=timeout)
    try:
        conn.request("GET", (parts.path or "/metrics") + (f"?{parts.query}" if parts.query
                                                          else ""))
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise ScrapeError(f"{url}: HTTP {response.status}")
        text = body.decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as err:
        if isinstance(err, ScrapeError):
            raise
        raise ScrapeError(f"{url}: {err}") from err
    finally:
        conn.close()
    return parse_metrics_text(text)


def scrape_many(urls: Iterable[str], *, timeout: float = 2.0,
                workers: int = 64) -> dict[str, MetricsSample | ScrapeError]:
    """Scrape many endpoints concurrently; failures come back as ScrapeError values."""
    def one(url: str) -> MetricsSample | ScrapeError:
        try:
            return scrape_pod_metrics(url, timeout)
        except ScrapeError as err:
            log.warning("scrape failed: %s", err)
            return err

    url_list = list(urls)
    if not url_list:
        return {}
    with ThreadPoolExecutor(max_workers=min(workers, len(url_list))) as pool:
        return dict(zip(url_list, pool.map(one, url_list), strict=True))


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
