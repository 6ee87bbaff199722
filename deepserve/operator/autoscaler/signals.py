"""Load signals from Triton's Prometheus metrics, per pod and summed over Ready pods.

The default signal is **in-flight requests** (concurrency), as in Knative's KPA: it is
what a replica's capacity is made of (a Triton model instance batches up to
``max_batch_size`` requests, so concurrency per replica is directly comparable to a
target), it is additive over pods, and it counts queued work as demand, so a saturated
replica still reports the whole backlog. Triton has no in-flight gauge, so it is derived
by Little's law from counters (Triton metrics docs,
https://github.com/triton-inference-server/server/blob/main/docs/user_guide/metrics.md):

    average in-flight over an interval = increase of nv_inference_request_duration_us
                                         / interval length in us

(request duration includes queue and compute time). That counts requests when they
finish; a burst of long requests shows up late, so the instantaneous gauge
``nv_inference_pending_request_count`` (requests queued, not yet executing) is a lower
bound that reacts at once: in-flight = max(Little's law, pending).

``tokensPerSecond`` (deepserve's generated-token counter rate) and
``queueTimeMicroseconds`` (mean queue time per request) are offered for models whose
cost is dominated by long generations or that have a latency SLO. Parsing and counter
resets reuse :mod:`deepserve.operator.metering.scrape`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deepserve.operator.metering.scrape import MetricsSample, counter_delta

INFLIGHT = "inflightRequests"
QUEUE_TIME = "queueTimeMicroseconds"
TOKENS = "tokensPerSecond"
METRICS = (INFLIGHT, QUEUE_TIME, TOKENS)
#: Metrics whose per-pod values add up to the model's load (replicas = load / target).
ADDITIVE = frozenset({INFLIGHT, TOKENS})


@dataclass(frozen=True)
class PodLoad:
    """One Ready pod's load over one scrape interval."""

    inflight: float
    requests: float  # requests finished in the interval (success + failure)
    queue_time_us: float  # mean queue time of those requests (0 when none finished)
    tokens_per_s: float
    interval_s: float
    latency_ms: float = 0.0  # mean request duration of those requests (0 when none finished)

    def value(self, metric: str) -> float:
        """The pod's value of ``metric`` (one of :data:`METRICS`)."""
        if metric == INFLIGHT:
            return self.inflight
        if metric == TOKENS:
            return self.tokens_per_s
        if metric == QUEUE_TIME:
            return self.queue_time_us
        raise ValueError(f"unknown scaling metric {metric!r}")


def _totals(sample: MetricsSample) -> dict[str, float]:
    return sample.counter_totals()


def pod_load(previous: MetricsSample | None, current: MetricsSample, interval_s: float) -> PodLoad | None:
    """The load between two scrapes of one pod; None without a previous scrape.

    Counter resets (pod or model restart) are handled by ``counter_delta``: a lower value
    than before counts as a fresh series.
    """
    if previous is None or interval_s <= 0:
        return None
    before, now = _totals(previous), _totals(current)

    def delta(name: str) -> float:
        return counter_delta(before.get(name), now.get(name, 0.0)) if name in now else 0.0

    busy_us = delta("request_duration_us")
    finished = delta("requests_success") + delta("requests_failure")
    queued_us = delta("queue_duration_us")
    tokens = delta("generated_tokens")
    pending = sum(v for (name, _), v in current.gauges.items() if name == "nv_inference_pending_request_count")
    inflight = max(busy_us / (interval_s * 1e6), pending)
    return PodLoad(inflight=inflight, requests=finished, queue_time_us=queued_us / finished if finished else 0.0,
                   tokens_per_s=tokens / interval_s, interval_s=interval_s,
                   latency_ms=busy_us / finished / 1000 if finished else 0.0)


def model_load(loads: Mapping[str, PodLoad], metric: str) -> float | None:
    """The model's load over Ready pods: the sum for additive metrics, else the mean.

    None when no Ready pod gave a sample: the caller must treat that as *unknown*,
    never as *idle*.
    """
    if not loads:
        return None
    values = [p.value(metric) for p in loads.values()]
    return sum(values) if metric in ADDITIVE else sum(values) / len(values)


def requests_finished(loads: Mapping[str, PodLoad]) -> float:
    """Requests finished over all sampled pods (activity for the idle timer)."""
    return sum(p.requests for p in loads.values())
