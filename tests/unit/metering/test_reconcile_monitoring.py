"""Reconciliation report and live monitoring figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deepserve.operator.metering import FIGURES, ModelMonitor, PriceSheet, reconcile
from deepserve.operator.metering.scrape import parse_metrics_text

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def counters(success: int, failure: int, generated: int) -> str:
    return (f'nv_inference_request_success{{model="m",version="1"}} {success}\n'
            f'nv_inference_request_failure{{model="m",version="1"}} {failure}\n'
            f'deepserve_generated_tokens_total{{model="m",version="1"}} {generated}\n')


def test_reconcile_reports_the_gap_per_model(ledger, make_event) -> None:
    events = [make_event(i) for i in range(10)] + [make_event(20, status="error")]
    ledger.ingest(events)
    generated = sum(e.generated_tokens for e in events)
    ledger.record_scrape("pod", "prod", "chat", "v1",
                         parse_metrics_text(counters(10, 1, generated)), T0 + timedelta(minutes=5))
    ledger.ingest([make_event(0, model="other")])
    report = reconcile(ledger, T0 + timedelta(minutes=10), T0 + timedelta(minutes=20))
    assert (report.start, report.end) == (T0, T0 + timedelta(hours=1))  # widened to hours
    chat, other = report.lines
    assert (chat.event_requests, chat.counter_requests, chat.request_gap) == (11, 11, 0)
    assert chat.generated_token_gap == 0 and chat.status == "ok"
    assert other.status == "no-counters"
    ledger.record_scrape("pod", "prod", "chat", "v1",
                         parse_metrics_text(counters(12, 1, generated + 7)),
                         T0 + timedelta(minutes=30))
    chat = reconcile(ledger, T0, T0 + timedelta(hours=1)).lines[0]
    assert (chat.request_gap, chat.generated_token_gap, chat.status) == (2, 7, "gap")
    assert "prod/chat/v1" in reconcile(ledger, T0, T0 + timedelta(hours=1)).to_text()


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_monitor_figures_and_prometheus_exposition(make_event) -> None:
    clock = FakeClock((T0 + timedelta(seconds=61)).timestamp())
    prices = PriceSheet.from_dict({"gpuHour": {"h100": "2"},
                                   "default": {"generatedPerMillion": "1"}})
    mon = ModelMonitor(window_s=60, clock=clock, prices=prices)
    events = [make_event(i, ttft_ms=100.0, queue_ms=5.0, generated_tokens=11,
                         started_at=T0 + timedelta(seconds=i), status="error" if i == 0 else "ok")
              for i in range(1, 61)]
    mon.observe_events(events)
    mon.observe_counters("prod", "chat", {"inference_count": 30, "exec_count": 10})
    mon.observe_gauges("pod-a", "prod", "chat", 0.25)
    mon.observe_gauges("pod-b", "prod", "chat", 0.75)
    mon.set_replicas("prod", "chat", ready=2, gpus_per_replica=4, pool="h100")
    f = mon.figures("prod", "chat")
    assert f["requestsPerSecond"] == pytest.approx(60 / 60)
    assert f["errorRate"] == 0
    assert f["latencyP50Seconds"] == pytest.approx(1.0)
    assert f["ttftP95Seconds"] == pytest.approx(0.1)
    assert f["tpotSeconds"] == pytest.approx(0.09)   # (1 s - 0.1 s) / 10 tokens
    assert f["queueSeconds"] == pytest.approx(0.005)
    assert f["batchSize"] == 3 and f["gpuUtilization"] == 0.5 and f["replicas"] == 2
    assert f["generatedTokensPerSecond"] == 11
    assert f["costPerHour"] == pytest.approx(8 * 2 + 11 * 3600 / 1e6)
    assert len(FIGURES) >= 12 and set(FIGURES) == set(f)

    families = {fam.name: fam for fam in text_string_to_metric_families(
        generate_latest(mon.registry).decode())}
    for metric, _help in FIGURES.values():
        assert families[metric].samples[0].labels == {"namespace": "prod", "model": "chat"}
    assert families["deepserve_usage_events_ingested"].samples[0].value == 60

    clock.t += 120  # the window moves on: rates fall to zero, replicas stay
    later = mon.summary("prod", "chat")
    assert later["requestsPerSecond"] == 0 and later["replicas"] == 2
    assert "latencyP50Seconds" not in later and "gpuUtilization" not in later


def test_grafana_dashboard_charts_every_figure() -> None:
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    dashboard = json.loads((root / "charts/deepserve/dashboards/deepserve.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric, _help in FIGURES.values():
        assert metric in exprs, metric
    assert "deepserve_usage_events_duplicate_total" in exprs
