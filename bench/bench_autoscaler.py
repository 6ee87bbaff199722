"""Autoscaler benchmark: load step -> scale decision, and failures during scale-from-zero.

    python bench/bench_autoscaler.py            # simulated clock, then ~40 s of real time
    python bench/bench_autoscaler.py --sim-only

1. Simulated clock (the pure decision, 1 s ticks, 10 s cold start): for load steps of
   1.4x..10x, seconds from the step to the scale decision and to the new replica Ready;
   idle -> zero; the decision goal is <= 5 s (Knative's panic window is 6 s).
2. Real time on 127.0.0.1: fake Triton replicas (aiohttp; KServe v2 /infer with 50 ms
   service time, 4 concurrent executions, Triton's counters on /metrics), the real
   gateway in front (its KServe v2 path and hold-and-wake), the real MetricsSampler (HTTP
   scrape + prometheus_client parse) and the pure decision ticking every second. It starts
   at zero replicas: a burst of requests arrives (held, scale-from-zero), then the load steps up and the time to the
   decision is measured on the wall clock. Counts requests that failed (goal 0).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import statistics
import time

import aiohttp
from aiohttp import web

from deepserve.operator.autoscaler import (
    Observation,
    ScalerState,
    ScalingPolicy,
    decide,
    model_load,
)
from deepserve.operator.autoscaler.io import MetricsSampler, PodEndpoint
from deepserve.operator.autoscaler.signals import requests_finished
from deepserve.operator.autoscaler.simulate import SimulatedModel, first_change
from deepserve.operator.gateway.config import GatewayConfig
from deepserve.operator.gateway.hold import HoldConfig
from deepserve.operator.gateway.routing import ModelRoute, VersionTarget
from deepserve.operator.gateway.server import Gateway
from deepserve.operator.metering.scrape import scrape_many
from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan

TARGET = 4.0


def simulated() -> None:
    """Decision latency per step size on the simulated clock."""
    print("== simulated clock: 1 s ticks, 10 s cold start, target 4 in flight per replica")
    print(f"{'step':>10} {'replicas':>9} {'decision_s':>11} {'replica_ready_s':>16} {'mode':>7}")
    for base, factor in ((2, 1.4), (2, 2.0), (2, 4.0), (2, 10.0)):
        policy = ScalingPolicy(min_replicas=1, max_replicas=50, target=TARGET)
        sim = SimulatedModel(policy, cold_start_s=10.0, start_replicas=base)
        sim.run(lambda t, b=base: b * TARGET * 0.9, 120)
        step_at = sim.now
        rows = sim.run(lambda t, b=base, f=factor: b * TARGET * 0.9 * f, 60)
        decided = first_change(rows, step_at, base)
        ready = next((r.t - step_at for r in rows if r.ready > base), None)
        mode = next((r.decision.mode for r in rows if r.replicas > base), "-")
        print(f"{factor:>9.1f}x {rows[-1].replicas:>9} {decided!s:>11} {ready!s:>16} {mode:>7}")
    policy = ScalingPolicy(min_replicas=0, max_replicas=10, target=TARGET, scale_to_zero=True, idle_seconds=60)
    sim = SimulatedModel(policy, cold_start_s=10.0, start_replicas=1)
    sim.run(lambda t: 2.0, 30)
    rows = sim.run(lambda t: 0.0, 120)
    zero = next((r.t - 30 for r in rows if r.replicas == 0), None)
    print(f"idle -> zero after {zero} s (idleSeconds 60)")


class FakeTriton:
    """One fake replica: /v2/models/m/infer (50 ms, 4 at a time) and Triton counters on /metrics."""

    def __init__(self, service_s: float = 0.05, slots: int = 4) -> None:
        self.service_s, self.sem = service_s, asyncio.Semaphore(slots)
        self.success, self.duration_us, self.queue_us, self.pending = 0, 0.0, 0.0, 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def infer(self, request: web.Request) -> web.Response:
        await request.read()
        t0 = time.monotonic()
        self.pending += 1
        async with self.sem:
            self.pending -= 1
            t1 = time.monotonic()
            await asyncio.sleep(self.service_s)
        self.success += 1
        self.queue_us += (t1 - t0) * 1e6
        self.duration_us += (time.monotonic() - t0) * 1e6
        return web.json_response({"model_name": "m", "outputs": [{"name": "y", "data": [1]}]})

    async def metrics(self, _request: web.Request) -> web.Response:
        lab = '{model="m",version="1"}'
        text = (f"# TYPE nv_inference_request_success counter\nnv_inference_request_success{lab} {self.success}\n"
                f"# TYPE nv_inference_request_duration_us counter\nnv_inference_request_duration_us{lab} "
                f"{self.duration_us:.0f}\n# TYPE nv_inference_queue_duration_us counter\n"
                f"nv_inference_queue_duration_us{lab} {self.queue_us:.0f}\n"
                f"# TYPE nv_inference_pending_request_count gauge\nnv_inference_pending_request_count{lab} "
                f"{self.pending}\n")
        return web.Response(text=text)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v2/models/m/infer", self.infer)
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.url


class MiniCluster:
    """Replicas that become Ready ``cold_start_s`` after the scaler asks for them."""

    def __init__(self, gateway: Gateway, cold_start_s: float) -> None:
        self.gateway, self.cold_start_s = gateway, cold_start_s
        self.replicas: list[FakeTriton] = []
        self.desired = 0
        self._starting = 0

    def scale(self, n: int) -> None:
        self.desired = n
        while len(self.replicas) + self._starting < n:
            self._starting += 1
            asyncio.get_running_loop().create_task(self._boot())

    async def _boot(self) -> None:
        await asyncio.sleep(self.cold_start_s)
        replica = FakeTriton()
        await replica.start()
        self._starting -= 1
        self.replicas.append(replica)
        self.gateway.set_routes([model_route([r.url for r in self.replicas])])  # held requests wake

    def pods(self) -> list[PodEndpoint]:
        return [PodEndpoint(str(i), f"m-{i}", "main", "", True, "n") for i in range(len(self.replicas))]

    async def close(self) -> None:
        for r in self.replicas:
            assert r.runner is not None
            await r.runner.cleanup()


KEY = "ds-benchautosca-benchsecret"
HELD = ("bench", "m", "main")  # (namespace, model, version) as the gateway holds it


class OneKey:
    """The bench's one API key (no limits in its plan)."""

    def authenticate(self, presented_key: str) -> Principal | None:
        """The bench tenant for :data:`KEY`, else None."""
        ok = hmac.compare_digest(presented_key.encode(), KEY.encode())
        return Principal("bench", "benchautosca", TenantPlan(ModelSelector(allow_all=True))) if ok else None


def model_route(urls: list[str]) -> ModelRoute:
    """Model ``bench/m``, one version ``main`` whose replicas serve KServe v2 at ``urls``."""
    return ModelRoute("bench", "m", versions=(VersionTarget("main", 100, tuple(urls), tuple(urls)),))


async def realtime(cold_start_s: float) -> None:
    """The real-time run described in the module docstring."""
    config = GatewayConfig(pod_load_every_s=0, hold=HoldConfig(queue_limit=500, hold_timeout_s=60))
    clusters: list[MiniCluster] = []

    async def scale_from_zero(namespace: str, model: str, version: str) -> None:  # as /scale would be
        clusters[0].scale(max(clusters[0].desired, 1))

    gateway = Gateway(OneKey(), [model_route([])], config=config, scale_up=scale_from_zero)
    cluster = MiniCluster(gateway, cold_start_s)
    clusters.append(cluster)
    policy = ScalingPolicy(min_replicas=0, max_replicas=8, target=TARGET, scale_to_zero=True, idle_seconds=30)
    state = ScalerState()

    port = await gateway.start()
    url = f"http://127.0.0.1:{port}/v2/models/bench/m/infer"  # the gateway's KServe v2 path
    results: list[int] = []
    stop = asyncio.Event()
    decisions: list[tuple[float, int, str]] = []

    def scrape(urls: list[str]) -> dict[str, object]:
        return dict(scrape_many([r.url + "/metrics" for r in cluster.replicas], timeout=1.0))

    sampler = MetricsSampler(lambda urls: {p.metrics_url: v for p, v in
                                           zip(cluster.pods(), scrape(urls).values(), strict=False)})

    async def scaler() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            pods = cluster.pods()
            loads = await asyncio.to_thread(sampler.sample, pods, now)
            held = gateway.holder.held.get(HELD, 0)
            obs = Observation(now, cluster.desired, len(pods), model_load(loads, policy.metric) if pods else None,
                              requests_finished(loads), held)
            d = decide(policy, state, obs)
            if d.replicas != cluster.desired:
                decisions.append((now - t0, d.replicas, d.mode))
                cluster.scale(d.replicas)
            await asyncio.sleep(1.0)

    async def client(session: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until and not stop.is_set():
            async with session.post(url, json={"inputs": []}, headers={"Authorization": f"Bearer {KEY}"}) as r:
                await r.read()
                results.append(r.status)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
        task = asyncio.create_task(scaler())
        t0 = time.monotonic()
        burst = [asyncio.create_task(client(s, t0 + 15)) for _ in range(6)]  # from zero: held, then served
        await asyncio.sleep(15)
        step_at = time.monotonic() - t0
        heavy = [asyncio.create_task(client(s, time.monotonic() + 15)) for _ in range(40)]
        await asyncio.gather(*burst, *heavy)
        stop.set()
        await task
    await gateway.stop()
    await cluster.close()
    failed = sum(1 for c in results if c != 200)
    cold = list(gateway.holder.cold_starts.get(HELD, []))
    after = [t - step_at for t, n, _ in decisions if t >= step_at]
    print(f"== real time on 127.0.0.1 (cold start {cold_start_s:.1f} s per replica, 1 s scaler tick)")
    print(f"requests: {len(results)} answered, {failed} failed (goal 0)")
    print(f"scale-from-zero: cold start measured by the gateway {statistics.fmean(cold):.2f} s" if cold else
          "scale-from-zero: no cold start recorded")
    print("decisions (t s, replicas, mode): " + ", ".join(f"({t:.1f}, {n}, {m})" for t, n, m in decisions))
    print(f"load step 6 -> 46 clients at t={step_at:.1f}s: first decision after "
          f"{after[0]:.1f} s (goal <= 5 s)" if after else "load step: no decision")


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim-only", action="store_true")
    ap.add_argument("--cold-start", type=float, default=2.0, help="seconds a fake replica takes to start")
    args = ap.parse_args()
    simulated()
    if not args.sim_only:
        asyncio.run(realtime(args.cold_start))


if __name__ == "__main__":
    main()
