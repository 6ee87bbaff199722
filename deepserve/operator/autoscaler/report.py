"""Per-version figures side by side (for `deepserve scale status`): replicas, rps, latency, tokens/s, usage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepserve.operator.autoscaler.io import PodEndpoint
from deepserve.operator.autoscaler.signals import PodLoad
from deepserve.operator.metering.scrape import MetricsSample


@dataclass(frozen=True)
class VersionFigures:
    """One version's row."""

    version: str
    weight: int
    desired: int
    ready: int
    rps: float
    latency_ms: float
    inflight: float
    tokens_per_s: float
    prompt_tokens: float  # totals since the pods started (Triton/deepserve counters)
    generated_tokens: float


def version_figures(model: Mapping[str, Any], pods: list[PodEndpoint], loads: Mapping[str, PodLoad],
                    samples: Mapping[str, MetricsSample]) -> list[VersionFigures]:
    """Rows for every version in the model's status (or spec), in spec order.

    ``loads`` and ``samples`` are keyed by pod uid; latency is request-weighted.
    """
    status = model.get("status") or {}
    versions = status.get("versions") or [{"name": v["name"], "weight": v.get("weight", 0)}
                                          for v in (model.get("spec") or {}).get("versions") or []]
    rows = []
    for v in versions:
        name = v["name"]
        mine = [p for p in pods if p.version == name]
        vl = [loads[p.uid] for p in mine if p.uid in loads]
        requests = sum(x.requests for x in vl)
        interval = max((x.interval_s for x in vl), default=0.0)
        totals = [samples[p.uid].counter_totals() for p in mine if p.uid in samples]
        rows.append(VersionFigures(
            version=name, weight=int(v.get("weight", 0)), desired=int(v.get("replicas", 0)),
            ready=sum(1 for p in mine if p.ready),
            rps=requests / interval if interval else 0.0,
            latency_ms=sum(x.latency_ms * x.requests for x in vl) / requests if requests else 0.0,
            inflight=sum(x.inflight for x in vl), tokens_per_s=sum(x.tokens_per_s for x in vl),
            prompt_tokens=sum(t.get("prompt_tokens", 0.0) for t in totals),
            generated_tokens=sum(t.get("generated_tokens", 0.0) for t in totals),
        ))
    return rows


def format_table(rows: list[VersionFigures]) -> str:
    """A fixed-width table for people."""
    head = ("VERSION", "WEIGHT", "READY/DESIRED", "RPS", "LATENCY_MS", "INFLIGHT", "TOKENS/S", "PROMPT_TOK",
            "GEN_TOK")
    body = [(r.version, f"{r.weight}%", f"{r.ready}/{r.desired}", f"{r.rps:.2f}", f"{r.latency_ms:.1f}",
             f"{r.inflight:.2f}", f"{r.tokens_per_s:.1f}", f"{r.prompt_tokens:.0f}", f"{r.generated_tokens:.0f}")
            for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *body])
