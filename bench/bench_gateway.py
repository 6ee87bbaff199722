"""Gateway overhead: the real gateway in front of an instant fake pod, against going direct.

    nice -n 10 python bench/bench_gateway.py                 # 3 runs of every figure
    nice -n 10 python bench/bench_gateway.py --rate 500 --runs 5

Three processes on 127.0.0.1: a fake engine pod (aiohttp, answers ``/v1/completions``
at once, JSON or a 4-event SSE stream with usage), the gateway (``Gateway.start``, one
key, a plan with requests/min, tokens/min and concurrency limits set high so every check
runs), and this load generator. Per run:

1. Fixed rate (open loop, ``--rate`` req/s for ``--seconds``): p50/p99 latency of
   non-streaming requests direct to the pod and through the gateway; overhead = gateway
   minus direct at the same percentile.
2. Max non-streaming req/s through the gateway (``--concurrency`` callers in a closed
   loop), and the same against the pod direct (the ratio bounds what the client can drive).
3. Streaming: time to the first SSE event (TTFT), direct and through the gateway, at a
   modest fixed rate; added = gateway minus direct (p50).
5. Idle connections: ``--idle`` (10,000) TCP connections opened to the gateway and left
   silent, and a caller's p50/p99 at 20 req/s meanwhile (the quiet tenant alone is the baseline).
6. With ``--litellm PATH``: chat completions direct, through the gateway and through
   LiteLLM's proxy (from PyPI, in its own venv; master key only, as its virtual keys and
   per-key limits need a Postgres database), p50/p99 at ``--lite-rate`` and max req/s.
4. Fairness: a quiet tenant at 20 req/s, its p99 alone and beside a noisy tenant sending
   20x its own requests/min limit (600/min, used up first) — its requests are 429s.

Prints median and range (min-max) over ``--runs`` runs. On a shared 2-core machine the
load generator itself competes for CPU: the figures are an upper bound on the overhead.

``--pinned`` measures instead what one gateway process does with one core to itself: the
gateway is pinned to CPU 0, and an instant pod and the load generator written in Go
(``bench/gateway_load``, standard library only, a few tens of µs per request; built with the
local ``go``) share CPU 1. A Python load generator costs about as much per request as the
gateway, so it cannot drive one gateway process to its limit on two cores. Per run: max
non-streaming req/s of the one process (32 callers) and its CPU µs per request; p50/p99
direct to the pod and through the gateway at ``--rate`` (default 1,000) req/s open loop;
streaming time to the first SSE event at ``--stream-rate``; as a control, p50/p99 of the
aiohttp fake pod (a Python server that proxies nothing) on CPU 0 at the same rate; with ``--litellm``, LiteLLM's
proxy pinned to the same core in front of the same pod, chat completions (max req/s; p50/p99
at ``--lite-rate``), beside the gateway's chat figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

KEY = "ds-benchbenchbe-benchsecret"
NOISY_KEY = "ds-noisynoisyno-noisysecret"
NOISY_RPM = 600  # 10 req/s; the noisy tenant sends 20x that
BODY = {"model": "bench/tiny", "prompt": "Say hello to the benchmark, please. " * 4, "max_tokens": 16}
CHAT = {"model": "bench/tiny", "messages": [{"role": "user", "content": BODY["prompt"]}], "max_tokens": 16}
LITELLM_KEY = "sk-bench-master"


# ---- the two server processes ---------------------------------------------------------
def serve_pod(port_file: str) -> None:
    """An instant OpenAI pod: JSON completions, or 4 SSE events plus usage."""
    from deepserve.engine.openai_api import (
        DONE_EVENT,
        chat_response,
        completion_chunk,
        completion_response,
        sse_event,
        usage,
    )

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(completion_response("b", body["model"], "hi there", "stop", 40, 2))
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(4):
            await out.write(sse_event(completion_chunk("b", body["model"], "tok", "stop" if i == 3 else None)))
        if (body.get("stream_options") or {}).get("include_usage"):
            await out.write(sse_event(completion_chunk("b", body["model"], "", None, usage(40, 4))))
        await out.write(DONE_EVENT)
        return out

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(chat_response("b", body["model"], "hi there", "stop", 40, 2))

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    asyncio.run(_serve_forever(app, port_file))


def serve_gateway(port_file: str, pod_url: str) -> None:
    """The real gateway with one key and high limits, in front of ``pod_url``."""
    import hmac

    from deepserve.operator.gateway.server import Gateway, ModelRoute
    from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan

    plan = TenantPlan(ModelSelector(allow_all=True), requests_per_minute=10_000_000,
                      tokens_per_minute=10_000_000_000, max_concurrent_requests=100_000)
    keys = {KEY: Principal("bench", "benchbenchbe", plan),
            NOISY_KEY: Principal("noisy", "noisynoisyno", TenantPlan(ModelSelector(allow_all=True),
                                                                      requests_per_minute=NOISY_RPM))}

    class TwoKeys:
        def authenticate(self, presented_key: str) -> Principal | None:
            found = None
            for key, principal in keys.items():
                if hmac.compare_digest(presented_key.encode(), key.encode()):
                    found = principal
            return found

    async def main() -> None:
        gw = Gateway(TwoKeys(), [ModelRoute("bench", "tiny", pod_url)])
        port = await gw.start("127.0.0.1", 0)
        _write_port(port_file, port)
        await asyncio.Event().wait()

    _run_loop(main())  # as `deepserve gateway run` does (uvloop when installed)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` as ``deepserve gateway run`` does; a --baseline-tree from before
    ``gateway.eventloop`` existed ran on asyncio's loop, so it does here too."""
    try:
        from deepserve.operator.gateway.eventloop import run
    except ImportError:
        asyncio.run(main)
        return
    run(main)


async def _serve_forever(app: web.Application, port_file: str) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    _write_port(port_file, int(runner.addresses[0][1]))
    await asyncio.Event().wait()


def _write_port(path: str, port: int) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(path + ".tmp", path)


def _spawn(role: str, *args: str, tree: str = "", cpus: set[int] | None = None,
           cmd: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server process (this file's ``--serve role``, or ``cmd`` given ``-port-file``);
    returns it and its URL once it has written its port. ``cpus``: pin it to those CPUs."""
    port_file = f"/tmp/bench-gateway-{os.getpid()}-{role}{'-base' if tree else ''}.port"
    env = {**os.environ, "PYTHONPATH": tree} if tree else None  # import deepserve from ``tree``
    argv = [*cmd, "-port-file", port_file] if cmd else [sys.executable, __file__, "--serve", role, port_file, *args]
    proc = subprocess.Popen(argv, env=env, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"{role} did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        port = int(f.read())
    os.unlink(port_file)
    return proc, f"http://127.0.0.1:{port}"


def _start_litellm(binary: str, pod_url: str, cpus: set[int] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """LiteLLM's proxy (its own venv) in front of the pod: master key only, no database."""
    import socket
    import tempfile
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fd, config = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(f"""model_list:
  - model_name: bench/tiny
    litellm_params: {{model: openai/bench/tiny, api_base: "{pod_url}/v1", api_key: none}}
general_settings: {{master_key: {LITELLM_KEY}}}
""")
    # no network here: its price map from the wheel, not a download at start
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen([binary, "--config", config, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # it imports a lot: minutes on a busy machine
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health/liveliness", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("litellm exited") from None
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("litellm did not start within 300 s")


# ---- load ----------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one(session: aiohttp.ClientSession, url: str, stream: bool, key: str = KEY,
              chat: bool = False) -> float:
    """Seconds to the whole response (or to the first SSE event when streaming); -1 for a 429."""
    body = CHAT if chat else ({**BODY, "stream": True} if stream else BODY)
    start = time.perf_counter()
    async with session.post(url + ("/v1/chat/completions" if chat else "/v1/completions"), json=body,
                            headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status == 429 and key == NOISY_KEY:
            await r.read()
            return -1.0
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        if stream:
            await r.content.readline()
            first = time.perf_counter() - start
            await r.read()
            return first
        await r.read()
    return time.perf_counter() - start


async def fixed_rate(session: aiohttp.ClientSession, url: str, rate: float, seconds: float,
                     stream: bool = False, key: str = KEY, chat: bool = False) -> list[float]:
    """Open loop: one request every 1/rate s, whatever the answers do; their latencies."""
    tasks: list[asyncio.Task[float]] = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(session, url, stream, key, chat)))
    return list(await asyncio.gather(*tasks))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (Linux ``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def cpu_per_request(session: aiohttp.ClientSession, url: str, pid: int, args: argparse.Namespace,
                          name: str, add: Callable[[str, float], None]) -> float:
    """Max req/s of ``url`` and the CPU µs process ``pid`` spent per request meanwhile.

    CPU per request does not depend on what else the machine runs (wall-clock rates do), so
    ``1e6 / µs`` is what one core given wholly to that process would serve."""
    before, done = cpu_seconds(pid), [0]
    rps = await max_rps(session, url, args.concurrency, args.seconds, count=done)
    us = (cpu_seconds(pid) - before) / done[0] * 1e6
    add(f"{name} CPU us/request", us)
    add(f"{name} req/s per core (1e6 / CPU us)", 1e6 / us)
    return rps


async def max_rps(session: aiohttp.ClientSession, url: str, concurrency: int, seconds: float,
                  key: str = KEY, chat: bool = False, count: list[int] | None = None) -> float:
    """Closed loop: ``concurrency`` callers back to back; completed requests per second
    (the count is also left in ``done[0]`` when given)."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one(session, url, False, key, chat)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*[caller() for _ in range(concurrency)])
    if count is not None:
        count[0] = done
    return done / (time.perf_counter() - start)


async def baseline(s: aiohttp.ClientSession, base: str, args: argparse.Namespace, direct: list[float],
                   pod_rps: float, pids: dict[str, int], add: Callable[[str, float], None]) -> None:
    """The --baseline-tree gateway: the same fixed-rate and max req/s figures, same run."""
    through = await fixed_rate(s, base, args.rate, args.seconds)
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        add(f"baseline overhead {label} ms @{args.rate:g}/s", (pct(through, q) - pct(direct, q)) * 1e3)
    rps = await cpu_per_request(s, base, pids["baseline"], args, "baseline gateway", add)
    add("max req/s through the baseline gateway", rps)
    add("baseline gateway / direct max req/s", rps / pod_rps)


async def fairness(s: aiohttp.ClientSession, gw: str, args: argparse.Namespace,
                   add: Callable[[str, float], None]) -> None:
    """A quiet tenant's p99 alone, then beside a tenant sending 20x its requests/min limit."""
    quiet_rate, noisy_rate = 20.0, 20 * NOISY_RPM / 60
    burned = await fixed_rate(s, gw, 1000, NOISY_RPM / 1000, key=NOISY_KEY)  # use up its minute
    assert len(burned) == NOISY_RPM
    alone = await fixed_rate(s, gw, quiet_rate, args.seconds)
    beside, noisy = await asyncio.gather(
        fixed_rate(s, gw, quiet_rate, args.seconds),
        fixed_rate(s, gw, noisy_rate, args.seconds, key=NOISY_KEY),
    )
    add(f"quiet tenant p50 ms alone @{quiet_rate:g}/s", pct(alone, 0.5) * 1e3)
    add(f"quiet tenant p99 ms alone @{quiet_rate:g}/s", pct(alone, 0.99) * 1e3)
    add(f"quiet tenant p50 ms beside noisy @{noisy_rate:g}/s", pct(beside, 0.5) * 1e3)
    add(f"quiet tenant p99 ms beside noisy @{noisy_rate:g}/s", pct(beside, 0.99) * 1e3)
    admitted = sum(1 for v in noisy if v >= 0)
    add("noisy tenant admitted req/s (limit used up)", admitted / args.seconds)


async def idle_connections(s: aiohttp.ClientSession, gw: str, args: argparse.Namespace,
                           add: Callable[[str, float], None]) -> None:
    """A caller's p50/p99 at 20 req/s while ``--idle`` connections sit open doing nothing."""
    host, port = gw.removeprefix("http://").split(":")
    idle: list[asyncio.StreamWriter] = []
    for _ in range(0, args.idle, 250):
        opened = await asyncio.gather(*[asyncio.open_connection(host, int(port)) for _ in range(250)])
        idle += [writer for _, writer in opened]
    try:
        lat = await fixed_rate(s, gw, 20, args.seconds)
        add(f"p50 ms @20/s beside {args.idle} idle connections", pct(lat, 0.5) * 1e3)
        add(f"p99 ms @20/s beside {args.idle} idle connections", pct(lat, 0.99) * 1e3)
    finally:
        for writer in idle:
            writer.close()


def summary(name: str, values: list[float], unit: str) -> str:
    """``name: median (min-max) unit``."""
    return f"{name:<44} {statistics.median(values):9.2f} {unit}  (range {min(values):.2f}-{max(values):.2f}, n={len(values)})"


async def side_by_side(s: aiohttp.ClientSession, pod: str, gw: str, lite: str, args: argparse.Namespace,
                       add: Callable[[str, float], None]) -> None:
    """Chat completions direct, through this gateway and through LiteLLM's proxy."""
    for name, url, key in (("direct", pod, KEY), ("gateway", gw, KEY), ("litellm", lite, LITELLM_KEY)):
        lat = await fixed_rate(s, url, args.lite_rate, args.seconds, key=key, chat=True)
        add(f"chat p50 ms {name} @{args.lite_rate:g}/s", pct(lat, 0.5) * 1e3)
        add(f"chat p99 ms {name} @{args.lite_rate:g}/s", pct(lat, 0.99) * 1e3)
        add(f"chat max req/s {name}", await max_rps(s, url, args.concurrency, args.seconds, key, True))


async def bench(args: argparse.Namespace, pod: str, gw: str, lite: str | None, base: str | None,
                pids: dict[str, int]) -> None:
    # idle pooled connections closed after 2 s: below every server's idle timeout (uvicorn's is 5 s)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    figures: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        figures.setdefault(key, []).append(value)

    async with aiohttp.ClientSession(connector=connector) as s:
        await fixed_rate(s, gw, 100, 1)  # warm both paths and their connection pools
        await fixed_rate(s, pod, 100, 1)
        for run in range(args.runs):
            direct = await fixed_rate(s, pod, args.rate, args.seconds)
            through = await fixed_rate(s, gw, args.rate, args.seconds)
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                add(f"direct {label} ms @{args.rate:g}/s", pct(direct, q) * 1e3)
                add(f"gateway {label} ms @{args.rate:g}/s", pct(through, q) * 1e3)
                add(f"overhead {label} ms @{args.rate:g}/s", (pct(through, q) - pct(direct, q)) * 1e3)
            gw_rps = await cpu_per_request(s, gw, pids["gateway"], args, "gateway", add)
            pod_rps = await cpu_per_request(s, pod, pids["pod"], args, "pod", add)
            add("max req/s through the gateway", gw_rps)
            add("max req/s direct to the pod", pod_rps)
            add("gateway / direct max req/s", gw_rps / pod_rps)
            if base is not None:
                await baseline(s, base, args, direct, pod_rps, pids, add)
            ttft_direct = await fixed_rate(s, pod, args.stream_rate, args.seconds, stream=True)
            ttft_gw = await fixed_rate(s, gw, args.stream_rate, args.seconds, stream=True)
            add(f"TTFT p50 ms direct @{args.stream_rate:g}/s", pct(ttft_direct, 0.5) * 1e3)
            add(f"TTFT p50 ms gateway @{args.stream_rate:g}/s", pct(ttft_gw, 0.5) * 1e3)
            add("TTFT added p50 ms", (pct(ttft_gw, 0.5) - pct(ttft_direct, 0.5)) * 1e3)
            await fairness(s, gw, args, add)
            if args.idle:
                await idle_connections(s, gw, args, add)
            if lite is not None:
                await side_by_side(s, pod, gw, lite, args, add)
            print(f"run {run + 1}/{args.runs} done: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in figures.items()),
                  flush=True)
    for key, values in figures.items():
        unit = "x" if "/ direct" in key else ("ms" if " ms" in key else ("us" if " us/" in key else "req/s"))
        print(summary(key, values, unit))


# ---- --pinned: one gateway process on one core, Go load and pod on the other --------------
def build_go_load() -> str:
    """Build ``bench/gateway_load`` (Go standard library only) into the user cache; its path."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gateway_load", "main.go")
    out = os.path.expanduser("~/.cache/deepserve/bench/gateway_load")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run(["go", "build", "-o", out, src], check=True, env={**os.environ, "GOFLAGS": "-mod=mod"})
    return out


def go_load(binary: str, url: str, key: str, body: dict[str, Any], *, rate: float = 0, concurrency: int = 32,
            seconds: float = 5, stream: bool = False, cpus: set[int] | None = None) -> dict[str, Any]:
    """One run of the Go load generator; its JSON summary (requests, errors, rps, p50_ms, p99_ms)."""
    import json

    argv = [binary, "load", "-url", url, "-key", key, "-body", json.dumps(body), "-seconds", str(seconds),
            "-concurrency", str(concurrency), "-rate", str(rate)] + (["-stream"] if stream else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 120,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"{url}: {result['errors']} failed requests ({result.get('first_error')})")
    return result


def pinned(args: argparse.Namespace) -> None:
    """The ``--pinned`` figures (see the module docstring), median and range over ``--runs``."""
    gw_cpu, load_cpu = {0}, {1}
    binary = build_go_load()
    procs: list[subprocess.Popen[bytes]] = []
    figures: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        figures.setdefault(key, []).append(value)

    try:
        pod_proc, pod = _spawn("gopod", cpus=load_cpu, cmd=[binary, "pod"])
        procs.append(pod_proc)
        gw_proc, gw = _spawn("gateway", pod, cpus=gw_cpu)
        procs.append(gw_proc)
        # control: the aiohttp fake pod (a Python server doing no proxying) on the gateway's core
        py_proc, py_pod = _spawn("pod", cpus=gw_cpu)
        procs.append(py_proc)
        lite, lite_proc = None, None
        if args.litellm:
            lite_proc, lite = _start_litellm(args.litellm, pod, cpus=gw_cpu)
            procs.append(lite_proc)
            lite_proc.send_signal(signal.SIGSTOP)  # its core is the gateway's: stopped while not measured
        print(f"pinned: gateway pid {gw_proc.pid} on CPU 0; Go pod {pod} and load on CPU 1; litellm {lite}",
              flush=True)
        c, ch = "/v1/completions", "/v1/chat/completions"

        def run(url: str, **kw: Any) -> dict[str, Any]:
            return go_load(binary, url, KEY if "key" not in kw else kw.pop("key"), kw.pop("body", BODY),
                           seconds=args.seconds, cpus=load_cpu, **kw)

        run(gw + c, concurrency=8)  # warm the pools
        for i in range(args.runs):
            before = cpu_seconds(gw_proc.pid)
            top = run(gw + c, concurrency=args.concurrency)
            add("gateway max req/s, one process (32 callers)", top["rps"])
            add("gateway CPU us/request at max", (cpu_seconds(gw_proc.pid) - before) / top["requests"] * 1e6)
            add("pod max req/s direct (32 callers)", run(pod + c, concurrency=args.concurrency)["rps"])
            direct, through = run(pod + c, rate=args.rate), run(gw + c, rate=args.rate)
            for q in ("p50", "p99"):
                add(f"direct {q} ms @{args.rate:g}/s", direct[f"{q}_ms"])
                add(f"gateway {q} ms @{args.rate:g}/s", through[f"{q}_ms"])
                add(f"overhead {q} ms @{args.rate:g}/s", through[f"{q}_ms"] - direct[f"{q}_ms"])
            py_at = run(py_pod + c, rate=args.rate)
            for q in ("p50", "p99"):
                add(f"control: aiohttp pod alone on CPU 0 {q} ms @{args.rate:g}/s", py_at[f"{q}_ms"])
            sbody = {**BODY, "stream": True}
            t_direct = run(pod + c, rate=args.stream_rate, stream=True, body=sbody)
            t_gw = run(gw + c, rate=args.stream_rate, stream=True, body=sbody)
            add(f"TTFT p50 ms direct @{args.stream_rate:g}/s", t_direct["p50_ms"])
            add(f"TTFT p50 ms gateway @{args.stream_rate:g}/s", t_gw["p50_ms"])
            add("TTFT added p50 ms", t_gw["p50_ms"] - t_direct["p50_ms"])
            if lite is not None:
                for name, url, key in (("gateway", gw, KEY), ("litellm", lite, LITELLM_KEY)):
                    if name == "litellm" and lite_proc is not None:
                        lite_proc.send_signal(signal.SIGCONT)
                        gw_proc.send_signal(signal.SIGSTOP)  # likewise, while LiteLLM is measured
                    add(f"chat max req/s {name}", run(url + ch, key=key, body=CHAT,
                                                      concurrency=args.concurrency)["rps"])
                    at = run(url + ch, key=key, body=CHAT, rate=args.lite_rate)
                    add(f"chat p50 ms {name} @{args.lite_rate:g}/s", at["p50_ms"])
                    add(f"chat p99 ms {name} @{args.lite_rate:g}/s", at["p99_ms"])
                if lite_proc is not None:
                    lite_proc.send_signal(signal.SIGSTOP)
                    gw_proc.send_signal(signal.SIGCONT)
                add("chat max req/s gateway / litellm", figures["chat max req/s gateway"][-1]
                    / figures["chat max req/s litellm"][-1])
            print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in figures.items()),
                  flush=True)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    for key, values in figures.items():
        unit = "x" if " / " in key else ("ms" if " ms" in key else ("us" if " us/" in key else "req/s"))
        print(summary(key, values, unit))


def main() -> None:
    """Start the pod and the gateway processes, run the load, print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rate", type=float, default=200.0, help="fixed rate, requests/s")
    p.add_argument("--stream-rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--idle", type=int, default=10_000, help="idle connections held open in one step")
    p.add_argument("--litellm", default="", help="path of a `litellm` proxy binary: also measure it")
    p.add_argument("--lite-rate", type=float, default=100.0, help="fixed rate of the side by side")
    p.add_argument("--baseline-tree", default="", help="a source tree holding an older deepserve/ "
                   "(e.g. from `git archive`): its gateway is measured beside this one in the same run")
    p.add_argument("--pinned", action="store_true", help="one gateway process pinned to CPU 0, Go load "
                   "generator and pod on CPU 1 (needs `go`); --rate defaults to 1000 there")
    p.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pinned and not args.serve:
        if args.rate == 200.0:
            args.rate = 1000.0
        pinned(args)
        return
    if args.serve:
        role, port_file, *rest = args.serve
        serve_pod(port_file) if role == "pod" else serve_gateway(port_file, rest[0])
        return
    pod_proc, pod_url = _spawn("pod")
    gw_proc, gw_url = _spawn("gateway", pod_url)
    procs = [gw_proc, pod_proc]
    base_url = None
    pids = {"pod": pod_proc.pid, "gateway": gw_proc.pid}
    if args.baseline_tree:
        base_proc, base_url = _spawn("gateway", pod_url, tree=args.baseline_tree)
        procs.insert(0, base_proc)
        pids["baseline"] = base_proc.pid
    lite_url = None
    try:
        if args.litellm:
            lite_proc, lite_url = _start_litellm(args.litellm, pod_url)
            procs.insert(0, lite_proc)
        print(f"pod {pod_url}, gateway {gw_url}, litellm {lite_url}; {args.runs} runs, "
              f"{os.cpu_count()} CPUs", flush=True)
        asyncio.run(bench(args, pod_url, gw_url, lite_url, base_url, pids))
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
