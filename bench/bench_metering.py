"""Metering benchmarks; prints figures (not a test).

    .venv/bin/python bench/bench_metering.py [--events 200000] [--export-events 1000000]
        [--pods 1000] [--only ingest,scrape,export]

1. Events ingested per second on one core, through ``UsageLedger.ingest`` (validated
   events), ``ingest_json`` (JSON wire form: msgspec decode + validate + store, what the
   endpoint does) and, as the baseline, ``json.loads`` + ``ingest_dicts`` (per-event
   ``UsageEvent.from_dict``, the decode path before msgspec), with
   ``synchronous=FULL`` (the default: acknowledged = durable across power loss) and
   ``NORMAL`` (durable across process crashes only). Goal >= 50,000/s.
2. Scrape cycle for N simulated pod endpoints: parsing N Triton-shaped exposition texts
   in-process (first cycle: every series through prometheus_client's parser; steady
   cycles: its memoised reading), checked equal to a parser-only reading; and loopback
   HTTP cycles (one asyncio server process, N endpoint paths, ``scrape_many``). Goal <= 1 s
   for 1,000.
3. FOCUS export of 1M events (plus CloudEvents for comparison). Goal <= 10 s.
4. ``--only scale``: JSON wire ingest (``ingest_json``, ``synchronous=FULL``) measured
   ``--runs`` times on a ledger already holding ``--ledger-events`` (1M) events, each run
   adding ``--events`` more, against the same measurement on an empty ledger in the same
   process (the ratio); ``--arrival ordered`` (default: end times grow with the ledger, 1 %
   up to an hour late) or ``spread`` (over one day); then the peak RSS of exports of that ledger (FOCUS aligned and
   unaligned, CloudEvents) to a file, each in a fresh child process, against a child
   that only opens the ledger. Goals: >= 100k events/CPU-s; export <= 500 MiB RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from deepserve.engine.usage import UsageEvent
from deepserve.operator.metering import (
    PriceSheet,
    UsageLedger,
    export,
    parse_metrics_text,
    scrape_many,
)
from deepserve.operator.metering.scrape import MetricsSample, parse_metrics_text_uncached

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def make_events(n: int, offset: int = 0, spread_s: int = 86_400) -> list[UsageEvent]:
    """n events over 40 accounts, 12 models, spread over a day."""
    out = []
    for i in range(offset, offset + n):
        start = T0 + timedelta(seconds=(i * 7919) % spread_s, microseconds=i % 1_000_000)
        out.append(UsageEvent.create(
            model=f"model-{i % 12}", version=f"v{i % 2}", namespace=f"team-{i % 5}",
            account=f"acct-{i % 40}", request_id=f"req-{i}", prompt_tokens=50 + i % 900,
            generated_tokens=i % 700, compute_ms=12.5 + i % 50, precision="bf16",
            started_at=start, ended_at=start + timedelta(milliseconds=200 + i % 3000),
            status=("ok", "ok", "ok", "cancelled", "error")[i % 5], tenant=f"t{i % 9}",
            ttft_ms=30.0))
    return out


def bench_ingest(n: int, tmp: Path) -> None:
    print(f"== ingest: {n:,} events, batches of 1,000, one process/one core ==")
    t = time.perf_counter()
    events = make_events(n)
    print(f"   (building {n:,} UsageEvent objects took {time.perf_counter() - t:.2f} s)")
    wire = [json.dumps({"events": [e.to_dict() for e in events[i:i + 1000]]}).encode()
            for i in range(0, n, 1000)]
    modes = {
        "events": "UsageEvent objects          ",
        "dicts": "JSON, json.loads+from_dict  ",
        "wire": "JSON wire batches, msgspec  ",
    }
    for sync in ("FULL", "NORMAL"):
        for mode, label in modes.items():
            if sync == "NORMAL" and mode == "dicts":
                continue
            path = tmp / f"ingest-{sync}-{mode}.db"
            with UsageLedger(path, synchronous=sync) as ledger:
                t, c = time.perf_counter(), time.process_time()
                if mode == "events":
                    for i in range(0, n, 1000):
                        ledger.ingest(events[i:i + 1000])
                elif mode == "dicts":  # the decode path before msgspec, as the baseline
                    for body in wire:
                        ledger.ingest_dicts(json.loads(body)["events"])
                else:  # what POST /v1/usage/events does
                    for body in wire:
                        ledger.ingest_json(body)
                dt, cpu = time.perf_counter() - t, time.process_time() - c
                count = ledger.event_count()
            assert count == n
            print(f"   synchronous={sync:6} {label}: {n / dt:>9,.0f} events/s wall "
                  f"({dt:.2f} s), {n / cpu:>9,.0f} events/CPU-s", flush=True)


def triton_text(pod: int) -> str:
    """A Triton-shaped exposition (~60 lines) for one pod."""
    lines = []
    for name, typ in (("nv_inference_request_success", "counter"),
                      ("nv_inference_request_failure", "counter"),
                      ("nv_inference_count", "counter"), ("nv_inference_exec_count", "counter"),
                      ("nv_inference_request_duration_us", "counter"),
                      ("nv_inference_queue_duration_us", "counter"),
                      ("nv_inference_compute_input_duration_us", "counter"),
                      ("nv_inference_compute_infer_duration_us", "counter"),
                      ("nv_inference_compute_output_duration_us", "counter"),
                      ("nv_inference_pending_request_count", "gauge"),
                      ("deepserve_prompt_tokens", "counter"),
                      ("deepserve_generated_tokens", "counter")):
        lines += [f"# HELP {name} {name.replace('_', ' ')}", f"# TYPE {name} {typ}"]
        suffix = "_total" if name.startswith("deepserve") else ""
        for model in ("chat", "chat-draft"):
            lines.append(f'{name}{suffix}{{model="{model}",version="1"}} {pod * 37 + len(name)}')
    lines += ["# TYPE nv_gpu_utilization gauge"]
    lines += [f'nv_gpu_utilization{{gpu_uuid="GPU-{pod}-{g}"}} 0.{g + 3}' for g in range(8)]
    # families Triton also exposes that metering does not read (filtered before parsing)
    for name in ("nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes", "nv_gpu_power_usage",
                 "nv_gpu_power_limit", "nv_energy_consumption"):
        lines += [f"# HELP {name} {name}", f"# TYPE {name} gauge"]
        lines += [f'{name}{{gpu_uuid="GPU-{pod}-{g}"}} 7.1e10' for g in range(8)]
    for name in ("nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
                 "nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model"):
        lines += [f"# HELP {name} {name}", f"# TYPE {name} gauge", f"{name} 1"]
    return "\n".join(lines) + "\n"


def bench_scrape(pods: int) -> None:
    print(f"== scrape cycle: {pods:,} simulated pod endpoints ==")
    texts = [triton_text(p) for p in range(pods)]
    for cycle in ("first", "steady"):  # the first sight of each series goes through the full parser
        t, c = time.perf_counter(), time.process_time()
        samples = [parse_metrics_text(text) for text in texts]
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        assert all(s.counter_totals()["requests_success"] > 0 for s in samples)
        print(f"   in-process parse of {pods:,} texts ({len(texts[0]):,} bytes each), {cycle} cycle: "
              f"{dt:.3f} s wall, {cpu:.3f} s CPU")
    baseline = [parse_metrics_text_uncached(text) for text in texts[:200]]
    assert baseline == samples[:200], "memoised parse differs from the parser"

    # The endpoints are served by another process (as pods would be), so the scraper's
    # figure is not shared with the server's CPU time inside one interpreter.
    server = subprocess.Popen([sys.executable, __file__, "--serve-pods", str(pods)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        urls = [f"http://127.0.0.1:{port}/pod/{p}/metrics" for p in range(pods)]
        t = time.perf_counter()
        base = baseline_scrape(urls)
        base_s = time.perf_counter() - t
        print(f"   baseline (64 threads of http.client + parser-only reading): {base_s:.3f} s, "
              f"{sum(1 for r in base if r is None)} failed")
        for cycle in range(1, 4):
            t, c = time.perf_counter(), time.process_time()
            results = scrape_many(urls, timeout=5.0)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            failed = sum(1 for r in results.values() if isinstance(r, Exception))
            print(f"   loopback HTTP scrape_many, cycle {cycle} (endpoints served by another process): "
                  f"{dt:.3f} s wall ({base_s / dt:.1f}x the baseline), {cpu:.3f} s scraper CPU, {failed} failed")
    finally:
        server.terminate()
        server.wait(timeout=10)


def baseline_scrape(urls: list[str]) -> list[MetricsSample | None]:
    """The straightforward way, for the ratio: a thread per request, every line through the parser."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    def one(url: str) -> MetricsSample | None:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        try:
            conn.request("GET", parts.path)
            response = conn.getresponse()
            body = response.read().decode()
            return parse_metrics_text_uncached(body) if response.status == 200 else None
        except OSError:
            return None
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=64) as pool:
        return list(pool.map(one, urls))


def serve_pods(pods: int) -> None:
    """Serve /pod/<i>/metrics for i < pods on a free loopback port (bench helper, asyncio)."""
    import asyncio

    bodies = {}
    for p in range(pods):
        body = triton_text(p).encode()
        bodies[f"/pod/{p}/metrics".encode()] = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                                                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            writer.write(bodies.get(path, b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
            await writer.drain()
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=2048)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def bench_export(n: int, tmp: Path) -> None:
    print(f"== export: {n:,} events in the ledger ==")
    path = tmp / "export.db"
    with UsageLedger(path, synchronous="NORMAL") as ledger:
        ledger.set_prices(PriceSheet.from_dict({"default": {
            "promptPerMillion": "0.5", "generatedPerMillion": "1.5", "perRequest": "0.0001"}}),
            T0 - timedelta(days=1))
        t = time.perf_counter()
        step = 50_000
        for offset in range(0, n, step):
            batch = make_events(min(step, n - offset), offset)
            for i in range(0, len(batch), 5000):
                ledger.ingest(batch[i:i + 5000])
        print(f"   (loading took {time.perf_counter() - t:.1f} s)")
        window = (T0, T0 + timedelta(days=2))
        for fmt in ("focus", "cloudevents"):
            out = io.StringIO()
            t, c = time.perf_counter(), time.process_time()
            records = export(ledger, fmt, *window, out)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            print(f"   {fmt:12} hour-aligned window: {dt:6.2f} s wall, {cpu:6.2f} s CPU, "
                  f"{records:,} records, {len(out.getvalue()) / 1e6:.1f} MB")
        out = io.StringIO()
        t = time.perf_counter()
        records = export(ledger, "focus", T0 + timedelta(seconds=1), window[1], out)
        print(f"   focus        unaligned window (aggregates from raw events): "
              f"{time.perf_counter() - t:6.2f} s, {records:,} rows")


def wire_bodies(n: int, offset: int, batch: int = 1000, arrival: str = "ordered") -> list[bytes]:
    """JSON wire batches of make_events' events, built without UsageEvent objects.

    ``arrival="ordered"``: event i starts at T0 + 2 ms x i (a ledger that grows with time,
    as a live one does) and every 100th arrives late, up to an hour after it ended;
    ``"spread"``: start times scattered over one day (make_events' worst case for an index
    ordered by time)."""
    import msgspec

    from deepserve.engine.usage import format_time, make_event_id
    bodies = []
    for b in range(offset, offset + n, batch):
        events = []
        for i in range(b, min(b + batch, offset + n)):
            if arrival == "spread":
                start = T0 + timedelta(seconds=(i * 7919) % 86_400, microseconds=i % 1_000_000)
            else:
                late_s = (i * 7919) % 3600 if i % 100 == 0 else 0
                start = T0 + timedelta(microseconds=2000 * i) - timedelta(seconds=late_s)
            ns, model, ver, rid = f"team-{i % 5}", f"model-{i % 12}", f"v{i % 2}", f"req-{i}"
            events.append({
                "event_id": make_event_id(ns, model, ver, rid), "model": model, "version": ver,
                "namespace": ns, "account": f"acct-{i % 40}", "request_id": rid,
                "prompt_tokens": 50 + i % 900, "generated_tokens": i % 700,
                "compute_ms": 12.5 + i % 50, "precision": "bf16",
                "started_at": format_time(start),
                "ended_at": format_time(start + timedelta(milliseconds=200 + i % 3000)),
                "status": ("ok", "ok", "ok", "cancelled", "error")[i % 5],
                "tenant": f"t{i % 9}", "ttft_ms": 30.0})
        bodies.append(msgspec.json.encode({"events": events}))
    return bodies


def _ingest_rate(ledger: UsageLedger, bodies: list[bytes]) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    for body in bodies:
        ledger.ingest_json(body)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    n = sum(body.count(b'"event_id"') for body in bodies)
    return n / cpu, n / dt


def _spread(values: list[float], fmt: str = ",.0f") -> str:
    v = sorted(values)
    return f"median {v[len(v) // 2]:{fmt}} (range {v[0]:{fmt}}-{v[-1]:{fmt}})"


EXPORT_CHILD = """
import sys, time
from datetime import UTC, datetime, timedelta
from deepserve.operator.metering import UsageLedger, export
t0 = datetime(2026, 11, 1, tzinfo=UTC)
fmt, unaligned = sys.argv[2], sys.argv[3] == "1"
with UsageLedger(sys.argv[1]) as ledger, open(sys.argv[4], "w") as out:
    start = t0 + timedelta(seconds=1) if unaligned else t0
    t = time.perf_counter()
    n = export(ledger, fmt, start, t0 + timedelta(days=2), out) if fmt != "none" else 0
    dt = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child would report its
# parent's peak; VmHWM is this process image's own peak resident set.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(n, dt, hwm / 1024)
"""


def bench_scale(ledger_events: int, n: int, runs: int, tmp: Path, ingest: bool = True,
                export_runs: int | None = None, arrival: str = "ordered") -> None:
    print(f"== ingest at scale: JSON wire batches of 1,000, synchronous=FULL, {runs} runs of "
          f"{n:,} events on a ledger of {ledger_events:,}, arrival {arrival} ==")
    path = tmp / "scale.db"
    t = time.perf_counter()
    with UsageLedger(path, synchronous="NORMAL") as ledger:
        for offset in range(0, ledger_events, 100_000):
            for body in wire_bodies(min(100_000, ledger_events - offset), offset, 5000,
                                    arrival):
                ledger.ingest_json(body)
        assert ledger.event_count() == ledger_events
    print(f"   (filling took {time.perf_counter() - t:.0f} s; ledger file "
          f"{path.stat().st_size / 2**20:,.0f} MiB)", flush=True)
    empty_cpu: list[float] = []
    scaled_cpu: list[float] = []
    scaled_wall: list[float] = []
    for run in range(runs if ingest else 0):
        bodies = wire_bodies(n, 10_000_000 * (run + 1), arrival=arrival)
        with UsageLedger(tmp / f"empty-{run}.db") as ledger:
            empty_cpu.append(_ingest_rate(ledger, bodies)[0])
        bodies = wire_bodies(n, 20_000_000 * (run + 1), arrival=arrival)
        with UsageLedger(path) as ledger:
            cpu_rate, wall_rate = _ingest_rate(ledger, bodies)
            scaled_cpu.append(cpu_rate)
            scaled_wall.append(wall_rate)
        print(f"   run {run + 1}: empty ledger {empty_cpu[-1]:>9,.0f} events/CPU-s; "
              f"ledger of {ledger_events + run * n:,}: {cpu_rate:>9,.0f} events/CPU-s, "
              f"{wall_rate:>9,.0f} events/s wall", flush=True)
    if ingest:
        print(f"   empty ledger:  {_spread(empty_cpu)} events/CPU-s")
        print(f"   at {ledger_events:,}+: {_spread(scaled_cpu)} events/CPU-s, "
              f"{_spread(scaled_wall)} events/s wall; ratio to empty "
              f"{sorted(scaled_cpu)[runs // 2] / sorted(empty_cpu)[runs // 2]:.2f}")
    with UsageLedger(path) as ledger:
        total = ledger.event_count()
    print(f"== export memory: ledger of {total:,} events, each export in a fresh process ==")
    for fmt, unaligned in (("none", False), ("focus", False), ("focus", True),
                           ("cloudevents", False)):
        rss, secs = [], []
        records = "0"
        for _ in range(export_runs or runs):
            done = subprocess.run([sys.executable, "-c", EXPORT_CHILD, str(path), fmt,
                                   "1" if unaligned else "0", str(tmp / "out.txt")],
                                  capture_output=True, text=True, check=True)
            records, dt, peak = done.stdout.split()
            rss.append(float(peak))
            secs.append(float(dt))
        label = f"{fmt} {'unaligned' if unaligned else 'aligned'}" if fmt != "none" else \
            "open the ledger only (baseline)"
        print(f"   {label:32}: peak RSS {_spread(rss)} MiB, {_spread(secs, '.2f')} s, "
              f"{int(records):,} records", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--export-events", type=int, default=1_000_000)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--only", default="ingest,scrape,export",
                        help="comma-separated: ingest, scrape, export, scale, scale-export")
    parser.add_argument("--ledger-events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arrival", choices=("ordered", "spread"), default="ordered",
                        help="scale: event end times growing with the ledger, or over one day")
    parser.add_argument("--export-runs", type=int, help="runs of each export (default --runs)")
    parser.add_argument("--serve-pods", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pods:
        serve_pods(args.serve_pods)
        return
    only = set(args.only.split(","))
    print(f"cpu count {os.cpu_count()}, sqlite {__import__('sqlite3').sqlite_version}")
    with tempfile.TemporaryDirectory(prefix="bench-metering-") as d:
        if "ingest" in only:
            bench_ingest(args.events, Path(d))
        if "scrape" in only:
            bench_scrape(args.pods)
        if "export" in only:
            bench_export(args.export_events, Path(d))
        if "scale" in only or "scale-export" in only:
            bench_scale(args.ledger_events, args.events, args.runs, Path(d),
                        ingest="scale" in only, export_runs=args.export_runs,
                        arrival=args.arrival)


if __name__ == "__main__":
    main()
