"""The gateway's Prometheus metrics, in a private registry served on ``GET /metrics``.

Labels are model full names the gateway itself knows (never a caller's raw ``model`` string,
which would let anyone grow the series), versions, status codes and refusal reasons; never a
key, key id or tenant secret.

``held_text(namespace)`` renders the held-request gauge the operator's autoscaler reads
(``deepserve_activator_held_requests{model, version}``, model = InferenceModel name) for one
namespace, so ``deepserve operator run --activator NAMESPACE=http://<gateway>/held/NAMESPACE``
works as it did against the activator.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

HELD_METRIC = "deepserve_activator_held_requests"  # the autoscaler reads this name
UNKNOWN_MODEL = ""


class GatewayMetrics:
    """Counters, histograms and gauges of one gateway process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "deepserve_gateway_requests",
            "Requests answered, by model and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "deepserve_gateway_request_seconds",
            "Time from request to the end of its response (holding included).",
            ["model"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.refusals = Counter(
            "deepserve_gateway_refusals",
            "Requests refused by the gateway itself, by reason.",
            ["reason"],
            registry=r,
        )
        self.tokens = Counter(
            "deepserve_gateway_tokens",
            "Tokens the upstreams reported (prompt + completion), by model.",
            ["model"],
            registry=r,
        )
        self.held = Gauge(
            "deepserve_gateway_held_requests",
            "Requests held waiting for a Ready replica.",
            ["namespace", "model", "version"],
            registry=r,
        )
        self.cold_start = Histogram(
            "deepserve_gateway_cold_start_seconds",
            "First held request to the first Ready replica.",
            ["namespace", "model", "version"],
            registry=r,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
        )
        self._held_counts: dict[tuple[str, str, str], int] = {}
        # label children cached per label values: ``labels()`` takes a lock and builds a key
        # on every call; the values are bounded (routes the gateway knows, statuses, reasons)
        self._answered: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._refused: dict[str, Any] = {}

    def answered(self, model: str, status: int, seconds: float | None = None) -> None:
        """Count one answered request (and, when given, its latency) for ``model``."""
        children = self._answered.get((model, status))
        if children is None:
            children = (self.requests.labels(model, str(status)), self.latency.labels(model))
            self._answered[(model, status)] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def refused(self, reason: str) -> None:
        """Count one refusal by the gateway itself."""
        child = self._refused.get(reason)
        if child is None:
            child = self._refused[reason] = self.refusals.labels(reason)
        child.inc()

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

    def set_held(self, namespace: str, model: str, version: str, count: int) -> None:
        """Record how many requests are held for one version."""
        self._held_counts[(namespace, model, version)] = count
        self.held.labels(namespace, model, version).set(count)

    def held_text(self, namespace: str) -> bytes:
        """The activator-compatible held gauge for one namespace's models."""
        registry = CollectorRegistry()
        gauge = Gauge(HELD_METRIC, "Requests held waiting for a Ready replica.", ["model", "version"],
                      registry=registry)
        for (ns, model, version), count in self._held_counts.items():
            if ns == namespace:
                gauge.labels(model, version).set(count)
        return generate_latest(registry)
