"""Custom Triton metrics of a deepserve model, via ``pb_utils.MetricFamily``.

They appear on Triton's Prometheus endpoint (:8002/metrics) next to its own
``nv_inference_*`` counters, labelled with model, version and precision.
"""

from __future__ import annotations

from typing import Any

from deepserve.engine.runtime import RequestStats
from deepserve.engine.triton.load import LoadSnapshot

TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]


class EngineMetrics:
    """Counters and histograms for one served model (``pb`` is triton_python_backend_utils)."""

    def __init__(self, pb: Any, model: str, version: str, precision: str) -> None:
        family = pb.MetricFamily
        labels = {"model": model, "version": version, "precision": precision}
        self._labels = labels
        # Families must outlive their metrics (Triton deletes a family's metrics with it).
        self._families: list[Any] = []

        def counter(name: str, doc: str) -> Any:
            self._families.append(family(name=name, description=doc, kind=family.COUNTER))
            return self._families[-1]

        self.prompt_tokens = counter("deepserve_prompt_tokens_total",
                                     "Prompt tokens processed").Metric(labels=labels)
        self.generated_tokens = counter("deepserve_generated_tokens_total",
                                        "Tokens generated").Metric(labels=labels)
        self.cache_hit_tokens = counter("deepserve_prefix_cache_hit_tokens_total",
                                        "Prompt tokens served from the prefix cache").Metric(labels=labels)
        self._requests = counter("deepserve_requests_total", "Finished requests by finish reason")
        self._request_metrics: dict[str, Any] = {}
        self.rejected_requests = counter("deepserve_rejected_requests_total",
                                         "Requests refused as invalid").Metric(labels=labels)
        self._families.append(family(name="deepserve_precision_info", kind=family.GAUGE,
                                     description="Precision the engine runs in (1)"))
        info = self._families[-1].Metric(labels=labels)
        info.set(1)
        self._info = info
        self._queued, self._running, self._kv = (
            self._gauge(pb, name, doc) for name, doc in (
                ("deepserve_requests_queued", "Requests waiting for a cache slot"),
                ("deepserve_requests_running", "Requests being decoded"),
                ("deepserve_kv_cache_usage_ratio", "Fraction of the KV cache held by running requests")))
        self.ttft = self._histogram(pb, "deepserve_time_to_first_token_seconds",
                                    "Time to first token", TTFT_BUCKETS)
        self.tpot = self._histogram(pb, "deepserve_time_per_output_token_seconds",
                                    "Mean time per output token after the first", TPOT_BUCKETS)

    def _gauge(self, pb: Any, name: str, doc: str) -> Any:
        family = pb.MetricFamily
        self._families.append(family(name=name, description=doc, kind=family.GAUGE))
        return self._families[-1].Metric(labels=self._labels)

    def load(self, snapshot: LoadSnapshot) -> None:
        """Publish the engine's load (read by the pod frontend's inference-gateway gauges)."""
        self._queued.set(snapshot.queued)
        self._running.set(snapshot.running)
        self._kv.set(snapshot.kv_cache_usage)

    def _histogram(self, pb: Any, name: str, doc: str, buckets: list[float]) -> Any:
        family = pb.MetricFamily
        self._families.append(family(name=name, description=doc, kind=family.HISTOGRAM))
        return self._families[-1].Metric(labels=self._labels, buckets=buckets)

    def observe(self, stats: RequestStats, finish_reason: str) -> None:
        """Record one finished request."""
        self.prompt_tokens.increment(stats.prompt_tokens)
        self.generated_tokens.increment(stats.generated_tokens)
        if finish_reason not in self._request_metrics:
            self._request_metrics[finish_reason] = self._requests.Metric(
                labels={**self._labels, "finish_reason": finish_reason})
        self._request_metrics[finish_reason].increment(1)
        if stats.time_to_first_token_s is not None:
            self.ttft.observe(stats.time_to_first_token_s)
        if stats.time_per_output_token_s is not None:
            self.tpot.observe(stats.time_per_output_token_s)

    def cache_hits(self, tokens: int) -> None:
        """Count prompt tokens reused from the prefix cache."""
        self.cache_hit_tokens.increment(tokens)

    def rejected(self) -> None:
        """Count one invalid request."""
        self.rejected_requests.increment(1)
