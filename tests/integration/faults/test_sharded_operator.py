"""Three sharded operator replicas (--leader-elect NS/NAME --shards S) during a rollout, one of
them SIGKILLed every 20 s (and restarted, as its pod would be): every model converges, no
child is created twice, deleted or orphaned, no status flaps back, and the killed replica's
shards are held by live replicas again within 15 s.

Ground truth: raw watches of the models and of every child kind, opened before the first
model, see every write the API server accepted; the Leases say who holds each shard.

CI size: SHARD_MODELS models (default 150, about 2-3 minutes on 2 cores). Outside CI:
``DEEPSERVE_SHARD_MODELS=2000 .venv/bin/python -m pytest tests/integration/faults/test_sharded_operator.py -s``.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fault_checks import CHILD_KINDS, assert_one_owned_set_per_model, children
from ops_helpers import IM, condition, wait_for

from deepserve.operator.kube import Kube
from deepserve.operator.sharding import shard_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODELS = int(os.environ.get("DEEPSERVE_SHARD_MODELS", "150"))
SHARDS = 8
KILL_EVERY_S = 20.0
FAILOVER_GOAL_S = 15.0
LEASE = "deepserve-operator"
PLURALS = {"ConfigMap": "configmaps", "Deployment": "deployments", "Service": "services",
           "PodDisruptionBudget": "poddisruptionbudgets", "NetworkPolicy": "networkpolicies"}


class Watch(threading.Thread):
    """Every event of one collection from the start, reconnecting from the last resourceVersion."""

    def __init__(self, local: Any, path: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.local, self.path, self.stop = local, path, stop
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[str] = []
        self.rv = "0"  # an empty namespace: nothing before the first object is missed

    def run(self) -> None:
        while not self.stop.is_set():
            url = f"{self.local.server}{self.path}?watch=1&allowWatchBookmarks=false&resourceVersion={self.rv}" \
                  "&timeoutSeconds=30"
            try:
                with urllib.request.urlopen(url, context=self.local._ssl(), timeout=60) as r:
                    for line in r:
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":  # 410 Gone would mean events were missed
                            self.errors.append(str(ev["object"]))
                            return
                        self.rv = ev["object"]["metadata"]["resourceVersion"]
                        self.events.append((ev["type"], ev["object"]))
            except OSError as e:
                if not self.stop.is_set():
                    self.errors.append(f"reconnect after {e!r}")
                    time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _holders(kube: Kube, namespace: str) -> dict[int, str]:
    out = {}
    for lease in kube.list("coordination.k8s.io/v1", "Lease", namespace, label_selector="deepserve.io/shard-role=shard"):
        holder = (lease.get("spec") or {}).get("holderIdentity") or ""
        out[int(lease["metadata"]["name"].rsplit("-", 1)[1])] = holder
    return out


def _health(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _model(namespace: str, i: int) -> dict[str, Any]:
    return {"apiVersion": IM, "kind": "InferenceModel", "metadata": {"name": f"m{i:04d}", "namespace": namespace},
            "spec": {"source": {"uri": "builtin://tiny-llama"}, "scaling": {"minReplicas": 0}}}


def _flaps(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Per model: observedGeneration never goes down, and Ready / Scheduled once True stay True."""
    bad = []
    best: dict[str, dict[str, Any]] = defaultdict(lambda: {"gen": 0, "Ready": False, "Scheduled": False})
    for _type, obj in events:
        name, st = obj["metadata"]["name"], obj.get("status") or {}
        seen = best[name]
        gen = int(st.get("observedGeneration") or 0)
        if gen < seen["gen"]:
            bad.append(f"{name}: observedGeneration {seen['gen']} -> {gen}")
        seen["gen"] = max(seen["gen"], gen)
        for kind in ("Ready", "Scheduled"):
            now = condition(obj, kind).get("status") == "True"
            if seen[kind] and not now:
                bad.append(f"{name}: {kind} True -> {condition(obj, kind)}")
            seen[kind] = seen[kind] or now
    return bad


def test_three_sharded_replicas_sigkilled_every_20s_lose_nothing(
        kube: Kube, namespace: str, start_operator: Any, faults: Any) -> None:
    local, stop = faults.local, threading.Event()
    watches = {"InferenceModel": Watch(local, f"/apis/{IM}/namespaces/{namespace}/inferencemodels", stop)}
    for api_version, kind in CHILD_KINDS:
        base = f"/api/{api_version}" if api_version == "v1" else f"/apis/{api_version}"
        watches[kind] = Watch(local, f"{base}/namespaces/{namespace}/{PLURALS[kind]}", stop)
    for w in watches.values():
        w.start()

    def replica() -> tuple[Any, int]:
        port = _free_port()
        op = start_operator("--leader-elect", f"{namespace}/{LEASE}", "--shards", str(SHARDS), "--lease-duration",
                            "10", "--lease-renew", "3", "--autoscale-tick", "0", "--health-address",
                            f"127.0.0.1:{port}")
        return op, port

    replicas = [replica() for _ in range(3)]
    wait_for(lambda: len([h for h in _holders(kube, namespace).values() if h]) == SHARDS, "every shard held", 60,
             every=0.5)
    for _op, port in replicas:  # every replica answers its probes (whatever it holds)
        wait_for(lambda p=port: _health(p, "/healthz")[0] == 200, "healthz", 30, every=0.5)
        assert _health(port, "/readyz")[0] == 200

    creator = ThreadPoolExecutor(4)
    started = time.monotonic()
    created = creator.map(lambda i: kube.create(_model(namespace, i)), range(MODELS))
    failovers: list[float] = []  # SIGKILL -> every shard of the killed replica held by a live one
    reconciled: list[float] = []  # SIGKILL -> a model created then, in one of those shards, has its Deployment
    kills = 0

    probes: list[str] = []

    def all_ready() -> bool:
        models = kube.list(IM, "InferenceModel", namespace)
        return len(models) == MODELS + len(probes) and all(
            (m.get("status") or {}).get("observedGeneration") == 1 and condition(m, "Ready").get("status") == "True"
            for m in models)

    deadline = started + max(300.0, MODELS * 0.6)
    next_kill = started + KILL_EVERY_S
    while kills < 3 or not all_ready():
        assert time.monotonic() < deadline, f"not converged after {kills} kills"
        if time.monotonic() < next_kill:
            time.sleep(0.5)
            continue
        victim_index = kills % 3
        victim, _port = replicas[victim_index]
        tag = f"_{victim.proc.pid}_"
        lost = {s for s, h in _holders(kube, namespace).items() if tag in h}
        probe = next(f"probe{kills}-{j}" for j in range(10_000) if shard_of(namespace, f"probe{kills}-{j}", SHARDS) in lost)
        victim.kill()
        killed_at = time.monotonic()
        kube.create({**_model(namespace, 0), "metadata": {"name": probe, "namespace": namespace}})
        probes.append(probe)
        replicas[victim_index] = replica()  # its pod restarts, with a new identity

        def taken(tag: str = tag, lost: set[int] = lost) -> bool:
            return not any(tag in h or not h for s, h in _holders(kube, namespace).items() if s in lost)

        wait_for(taken, f"the shards {sorted(lost)} of the killed replica held again", 40, every=0.2)
        failovers.append(time.monotonic() - killed_at)
        wait_for(lambda p=probe: kube.get("apps/v1", "Deployment", f"{p}-main", namespace), f"{probe} reconciled", 40,
                 every=0.2)
        reconciled.append(time.monotonic() - killed_at)
        print(f"kill {kills + 1}: shards {sorted(lost)} held by live replicas {failovers[-1]:.2f}s after SIGKILL; "
              f"a model created in them then got its Deployment after {reconciled[-1]:.2f}s")
        kills += 1
        next_kill = killed_at + KILL_EVERY_S
    list(created)
    converged_s = time.monotonic() - started
    time.sleep(3)  # let the watches catch the last writes
    stop.set()

    print(f"{MODELS} models, {SHARDS} shards, 3 replicas, {kills} SIGKILLs: converged in {converged_s:.1f}s; "
          f"failover (shards held again) median {statistics.median(failovers):.2f}s, range "
          f"{min(failovers):.2f}-{max(failovers):.2f}s; new model in those shards reconciled: median "
          f"{statistics.median(reconciled):.2f}s, range {min(reconciled):.2f}-{max(reconciled):.2f}s")
    for kind, w in watches.items():
        assert not [e for e in w.errors if not e.startswith("reconnect")], (kind, w.errors)
    assert max(reconciled) <= FAILOVER_GOAL_S, reconciled
    kids = children(kube, namespace)
    # no child created twice, none deleted: one ADDED per name, never DELETED, one uid each
    for kind, w in watches.items():
        if kind == "InferenceModel":
            continue
        added: dict[str, set[str]] = defaultdict(set)
        # only the models' children (kube-controller-manager's kube-root-ca.crt ConfigMap lands in
        # the namespace too, before or after the watch opened)
        events = [(t, o) for t, o in w.events if "deepserve.io/model" in (o["metadata"].get("labels") or {})]
        for type_, obj in events:
            assert type_ != "DELETED", (kind, obj["metadata"]["name"])
            added[obj["metadata"]["name"]].add(obj["metadata"]["uid"])
        assert all(len(u) == 1 for u in added.values()), {n: u for n, u in added.items() if len(u) > 1}
        assert sum(1 for t, _ in events if t == "ADDED") == len(added), kind
        assert set(added) == {n for k, n in kids if k == kind}, kind  # the watch saw every child
    assert_one_owned_set_per_model(kube, namespace, [f"m{i:04d}" for i in range(MODELS)] + probes)
    flaps = _flaps(watches["InferenceModel"].events)
    assert not flaps, flaps[:20]
    for op, _port in replicas:
        assert op.proc.poll() is None, op.log()[-3000:]
