"""Parsing Triton metrics and surviving counter resets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deepserve.operator.metering import CounterTracker, ScrapeError, parse_metrics_text
from deepserve.operator.metering.scrape import counter_delta, parse_metrics_text_uncached

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def triton_text(success: int, failure: int = 0, prompt: int = 0, generated: int = 0,
                util: tuple[float, ...] = (0.5,)) -> str:
    """Exposition text shaped like Triton's :8002/metrics (plus deepserve counters)."""
    lines = [
        "# HELP nv_inference_request_success Number of successful inference requests",
        "# TYPE nv_inference_request_success counter",
        f'nv_inference_request_success{{model="chat",version="1"}} {success}',
        "# TYPE nv_inference_request_failure counter",
        f'nv_inference_request_failure{{model="chat",reason="BACKEND",version="1"}} {failure}',
        "# TYPE nv_inference_count counter",
        f'nv_inference_count{{model="chat",version="1"}} {success * 2}',
        "# TYPE nv_inference_exec_count counter",
        f'nv_inference_exec_count{{model="chat",version="1"}} {success}',
        "# TYPE nv_inference_queue_duration_us counter",
        f'nv_inference_queue_duration_us{{model="chat",version="1"}} {success * 1000}',
        "# TYPE deepserve_prompt_tokens counter",
        f'deepserve_prompt_tokens_total{{model="chat",version="1"}} {prompt}',
        "# TYPE deepserve_generated_tokens_total counter",
        f'deepserve_generated_tokens_total{{model="chat",version="1"}} {generated}',
        "# TYPE nv_gpu_utilization gauge",
        *(f'nv_gpu_utilization{{gpu_uuid="GPU-{i}"}} {u}' for i, u in enumerate(util)),
        "# TYPE nv_cpu_memory_used_bytes gauge",
        "nv_cpu_memory_used_bytes 1234",
    ]
    return "\n".join(lines) + "\n"


def test_parse_known_counters_and_gauges() -> None:
    sample = parse_metrics_text(triton_text(10, 2, 100, 300, util=(0.5, 0.7)))
    totals = sample.counter_totals()
    assert totals["requests_success"] == 10 and totals["requests_failure"] == 2
    assert totals["prompt_tokens"] == 100 and totals["generated_tokens"] == 300
    assert totals["inference_count"] == 20 and totals["exec_count"] == 10
    assert sample.gauge_mean("gpu_utilization") == pytest.approx(0.6)
    assert sample.gauge_mean("pending_requests") is None


def test_garbage_is_a_scrape_error() -> None:
    with pytest.raises(ScrapeError):
        parse_metrics_text("nv_inference_count{model=chat 12 x y\n")


def test_counter_reset_counts_the_new_value() -> None:
    assert counter_delta(None, 5) == 5
    assert counter_delta(5, 8) == 3
    assert counter_delta(8, 2) == 2  # restarted, counted 2 since
    tracker = CounterTracker()
    assert tracker.update("p", parse_metrics_text(triton_text(10)))["requests_success"] == 10
    assert tracker.update("p", parse_metrics_text(triton_text(15)))["requests_success"] == 5
    assert tracker.update("p", parse_metrics_text(triton_text(3)))["requests_success"] == 3
    tracker.forget("p")
    assert tracker.update("p", parse_metrics_text(triton_text(4)))["requests_success"] == 4


def test_ledger_persists_counter_state_and_final_scrape(ledger) -> None:
    def scrape(n: int, minutes: int, final: bool = False) -> dict[str, float]:
        return ledger.record_scrape("uid-1", "prod", "chat", "v1",
                                    parse_metrics_text(triton_text(n, generated=n * 10)),
                                    T0 + timedelta(minutes=minutes), final=final)

    assert scrape(10, 1)["requests_success"] == 10
    assert scrape(25, 2)["requests_success"] == 15
    assert scrape(5, 3)["requests_success"] == 5     # Triton restarted
    assert scrape(9, 70, final=True)["requests_success"] == 4
    totals = ledger.counter_totals(T0, T0 + timedelta(hours=2))
    assert totals[("prod", "chat", "v1")]["requests_success"] == 34
    assert totals[("prod", "chat", "v1")]["generated_tokens"] == 340
    assert ledger.counter_totals(T0 + timedelta(hours=1), T0 + timedelta(hours=2))[
        ("prod", "chat", "v1")]["requests_success"] == 4
    assert ledger._read("SELECT COUNT(*) FROM counter_state")[0][0] == 0


@pytest.mark.parametrize("success", [7, 8, 1_000_000, 3])
def test_repeated_series_read_the_same_as_the_parser_reads_them(success: int) -> None:
    # the second and later texts hit the memo of each series; values must still be fresh
    text = triton_text(success, success // 3, 11 * success, 5 * success, util=(0.25, 0.5, 1.0))
    text += 'nv_inference_pending_request_count{model="chat",version="1"} 4 1700000000000\n'
    text += 'nv_inference_exec_count{model="chat",version="2",note="a } b"} 9\n'
    for _ in range(2):
        sample = parse_metrics_text(text)
        assert sample == parse_metrics_text_uncached(text)


def test_a_bad_value_on_a_known_series_is_still_an_error() -> None:
    parse_metrics_text(triton_text(5))  # the series is now remembered
    bad = triton_text(5).replace('nv_inference_count{model="chat",version="1"} 10',
                                 'nv_inference_count{model="chat",version="1"} ten')
    with pytest.raises(ScrapeError):
        parse_metrics_text(bad)
