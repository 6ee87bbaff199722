"""Live per-model monitoring figures, computed over a sliding window from usage events,
scraped Triton counters/gauges and the replica count, and exposed as Prometheus metrics
in a registry this module owns (``ModelMonitor.registry``).

Figures per (namespace, model): requests/s, error rate, latency p50/p95/p99, queue time,
batch size, prompt and generated tokens/s, TTFT p50/p95, time per output token, GPU
utilisation, ready replicas, cost per hour (GPU-hours at pool price plus token and
request charges at the current rate) — see :data:`FIGURES`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from deepserve.engine.usage import UsageEvent
from deepserve.operator.metering.event_store import StoredEvent
from deepserve.operator.metering.pricing import PriceSheet

#: figure name -> (Prometheus metric name, help text)
FIGURES: dict[str, tuple[str, str]] = {
    "requestsPerSecond": ("deepserve_model_requests_per_second", "Finished requests per second"),
    "errorRate": ("deepserve_model_error_rate", "Share of requests that failed"),
    "latencyP50Seconds": ("deepserve_model_latency_p50_seconds", "Request latency, median"),
    "latencyP95Seconds": ("deepserve_model_latency_p95_seconds", "Request latency, 95th pct"),
    "latencyP99Seconds": ("deepserve_model_latency_p99_seconds", "Request latency, 99th pct"),
    "queueSeconds": ("deepserve_model_queue_seconds", "Mean time a request waits in queue"),
    "batchSize": ("deepserve_model_batch_size", "Mean inferences per model execution"),
    "promptTokensPerSecond": ("deepserve_model_prompt_tokens_per_second", "Tokens in per s"),
    "generatedTokensPerSecond": ("deepserve_model_generated_tokens_per_second",
                                 "Tokens out per second"),
    "ttftP50Seconds": ("deepserve_model_ttft_p50_seconds", "Time to first token, median"),
    "ttftP95Seconds": ("deepserve_model_ttft_p95_seconds", "Time to first token, 95th pct"),
    "tpotSeconds": ("deepserve_model_tpot_seconds", "Mean time per output token after the first"),
    "gpuUtilization": ("deepserve_model_gpu_utilization", "Mean GPU utilisation 0..1"),
    "replicas": ("deepserve_model_replicas", "Ready replicas"),
    "costPerHour": ("deepserve_model_cost_per_hour", "Current cost rate in the sheet currency"),
}

ModelKey = tuple[str, str]


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


class ModelMonitor(Collector):
    """Collects live figures; feed it with :meth:`observe_events`, :meth:`observe_counters`,
    :meth:`observe_gauges` and :meth:`set_replicas`. ``clock`` is injectable for tests."""

    def __init__(self, *, window_s: float = 60.0, clock: Callable[[], float] = time.time,
                 prices: PriceSheet | None = None) -> None:
        self.window_s, self.clock = window_s, clock
        self.prices = prices or PriceSheet()
        self._lock = threading.Lock()
        self._events: dict[ModelKey, deque[tuple[float, UsageEvent | StoredEvent]]] = {}
        self._counters: dict[ModelKey, deque[tuple[float, Mapping[str, float]]]] = {}
        self._gauges: dict[str, tuple[ModelKey, float, float]] = {}
        self._replicas: dict[ModelKey, tuple[int, int, str]] = {}
        self._accounts: dict[ModelKey, str] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.ingested = Counter("deepserve_usage_events_ingested", "Usage events stored",
                                registry=self.registry)
        self.duplicates = Counter("deepserve_usage_events_duplicate",
                                  "Usage events received again and ignored",
                                  registry=self.registry)
        self.rejected = Counter("deepserve_usage_batches_rejected",
                                "Ingest batches refused as malformed", registry=self.registry)
        self.registry.register(self)

    # -- inputs -------------------------------------------------------------------
    def observe_events(self, events: Iterable[UsageEvent | StoredEvent]) -> None:
        """Add newly ingested events (the ledger listener calls this with UsageEvents or,
        for JSON batches, StoredEvents: same attributes)."""
        with self._lock:
            n = 0
            for e in events:
                key = (e.namespace, e.model)
                end_s = (e.ended_us / 1_000_000 if isinstance(e, StoredEvent)
                         else e.ended_at.timestamp())  # the same float either way
                self._events.setdefault(key, deque()).append((end_s, e))
                self._accounts[key] = e.account
                n += 1
            self.ingested.inc(n)

    def observe_counters(self, namespace: str, model: str, deltas: Mapping[str, float],
                         at: float | None = None) -> None:
        """Add counter increases from one pod scrape (``sample_deltas`` output)."""
        with self._lock:
            self._counters.setdefault((namespace, model), deque()).append(
                (self.clock() if at is None else at, dict(deltas)))

    def observe_gauges(self, pod: str, namespace: str, model: str,
                       gpu_utilization: float | None) -> None:
        """Record a pod's latest GPU utilisation (None forgets the pod)."""
        with self._lock:
            if gpu_utilization is None:
                self._gauges.pop(pod, None)
            else:
                self._gauges[pod] = ((namespace, model), gpu_utilization, self.clock())

    def set_replicas(self, namespace: str, model: str, ready: int, gpus_per_replica: int = 0,
                     pool: str = "") -> None:
        """Record the model's Ready replicas and the GPUs they hold (for cost per hour)."""
        with self._lock:
            self._replicas[(namespace, model)] = (ready, gpus_per_replica, pool)

    # -- figures ------------------------------------------------------------------
    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        for events in self._events.values():
            while events and events[0][0] < horizon:
                events.popleft()
        for counters in self._counters.values():
            while counters and counters[0][0] < horizon:
                counters.popleft()
        for pod in [p for p, (_, _, at) in self._gauges.items() if at < horizon]:
            del self._gauges[pod]

    def figures(self, namespace: str, model: str) -> dict[str, float | None]:
        """All figures for one model (None where there is no data in the window)."""
        with self._lock:
            self._trim(self.clock())
            return self._figures((namespace, model))

    def _figures(self, key: ModelKey) -> dict[str, float | None]:
        events = [e for _, e in self._events.get(key, ())]
        window = self.window_s
        lat = [e.latency_ms / 1000 for e in events]
        ttft = [e.ttft_ms / 1000 for e in events if e.ttft_ms is not None]
        tpot = [(e.latency_ms - e.ttft_ms) / 1000 / (e.generated_tokens - 1) for e in events
                if e.ttft_ms is not None and e.generated_tokens > 1]
        ctr: dict[str, float] = {}
        for _, deltas in self._counters.get(key, ()):
            for metric, value in deltas.items():
                ctr[metric] = ctr.get(metric, 0.0) + value
        util = [u for (k, u, _) in self._gauges.values() if k == key]
        prompt = sum(e.prompt_tokens for e in events)
        generated = sum(e.generated_tokens for e in events)
        queue_ms = [e.queue_ms for e in events if e.queue_ms is not None]
        queue_s: float | None = sum(queue_ms) / len(queue_ms) / 1000 if queue_ms else None
        if queue_s is None and ctr.get("requests_success"):
            queue_s = ctr.get("queue_duration_us", 0.0) / 1e6 / ctr["requests_success"]
        ready, gpus, pool = self._replicas.get(key, (0, 0, ""))
        account = self._accounts.get(key, "")
        price = self.prices.resolve(account, *key)
        cost = (Decimal(ready * gpus) * self.prices.gpu_hour_price(pool)
                + Decimal(repr(prompt / window * 3600)) * price.prompt_per_million / 1_000_000
                + Decimal(repr(generated / window * 3600)) * price.generated_per_million
                / 1_000_000
                + Decimal(repr(len(events) / window * 3600)) * price.per_request)
        return {
            "requestsPerSecond": len(events) / window,
            "errorRate": (sum(e.status == "error" for e in events) / len(events)
                          if events else None),
            "latencyP50Seconds": quantile(lat, 0.50),
            "latencyP95Seconds": quantile(lat, 0.95),
            "latencyP99Seconds": quantile(lat, 0.99),
            "queueSeconds": queue_s,
            "batchSize": (ctr["inference_count"] / ctr["exec_count"]
                          if ctr.get("exec_count") else None),
            "promptTokensPerSecond": prompt / window,
            "generatedTokensPerSecond": generated / window,
            "ttftP50Seconds": quantile(ttft, 0.50),
            "ttftP95Seconds": quantile(ttft, 0.95),
            "tpotSeconds": sum(tpot) / len(tpot) if tpot else None,
            "gpuUtilization": sum(util) / len(util) if util else None,
            "replicas": float(ready),
            "costPerHour": float(cost),
        }

    def models(self) -> list[ModelKey]:
        """Models with any data."""
        with self._lock:
            return sorted(set(self._events) | set(self._counters) | set(self._replicas)
                          | {k for k, _, _ in self._gauges.values()})

    def summary(self, namespace: str, model: str) -> dict[str, float]:
        """Figures for the InferenceModel status (rounded, absent figures left out)."""
        return {k: round(v, 6) for k, v in self.figures(namespace, model).items()
                if v is not None}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Prometheus collector protocol: one gauge family per figure, labelled by model."""
        per_model = {key: self.figures(*key) for key in self.models()}
        for figure, (metric, help_text) in FIGURES.items():
            family = GaugeMetricFamily(metric, help_text, labels=["namespace", "model"])
            for (ns, model), values in per_model.items():
                if values[figure] is not None:
                    family.add_metric([ns, model], float(values[figure]))  # type: ignore[arg-type]
            yield family
