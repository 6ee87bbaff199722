"""An engine pod that crash-loops: the model turns Degraded with one Warning Event, and the
operator does not hot-loop: a bounded number of writes to the model, no Deployment churn,
little CPU, while the restarts keep coming."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fault_checks import must_get, ready
from model_cases import make_model
from ops_helpers import IM, condition

from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WINDOW_S = 15.0
RESTARTS = (4, 5, 6)  # what the kubelet reports over the window (its back-off: 10 s, 20 s, ...)


def crash_loop(kube: Kube, pod: dict[str, Any], restarts: int) -> None:
    """Write the status a kubelet writes for a container that keeps exiting 1."""
    md, st = pod["metadata"], pod["status"]
    conditions = [{**c, "status": "False", "reason": "ContainersNotReady"} if c["type"] in ("Ready", "ContainersReady")
                  else c for c in st.get("conditions", [])]
    container = {"name": "triton", "image": pod["spec"]["containers"][0]["image"], "ready": False, "started": False,
                 "restartCount": restarts,
                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "engine exited",
                                              "startedAt": "2026-01-01T00:00:00Z",
                                              "finishedAt": "2026-01-01T00:00:05Z"}}}
    kube.request("PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                 body={"status": {"conditions": conditions, "containerStatuses": [container]}},
                 content_type="application/merge-patch+json")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime in clock ticks (USER_HZ 100)


def count_model_writes(faults: Any, namespace: str, name: str, rv: str, seconds: float, out: list[str]) -> None:
    """Append the type of every watch event of the model from ``rv`` for ``seconds``."""
    local = faults.local
    url = (f"{local.server}/apis/{IM}/namespaces/{namespace}/inferencemodels?watch=1&resourceVersion={rv}"
           f"&fieldSelector=metadata.name%3D{name}&timeoutSeconds={int(seconds)}")
    with urllib.request.urlopen(url, context=local._ssl(), timeout=seconds + 10) as r:
        for line in r:
            out.append(json.loads(line)["type"])


def test_crash_looping_engine_is_degraded_without_a_hot_loop(
        kube: Kube, namespace: str, start_operator: Any, faults: Any) -> None:
    op = start_operator()
    kube.create(make_model("crash", namespace).obj())
    ready(kube, namespace, "crash")
    generation = must_get(kube, "apps/v1", "Deployment", "crash-main", namespace)["metadata"]["generation"]
    pod = kube.list("v1", "Pod", namespace, label_selector="deepserve.io/model=crash")[0]
    rv = must_get(kube, IM, "InferenceModel", "crash", namespace)["metadata"]["resourceVersion"]
    writes: list[str] = []
    watcher = threading.Thread(target=count_model_writes, args=(faults, namespace, "crash", rv, WINDOW_S, writes))
    watcher.start()
    cpu0, t0 = cpu_seconds(op.proc.pid), time.monotonic()
    for i, restarts in enumerate(RESTARTS):
        time.sleep(max(0.0, t0 + i * WINDOW_S / len(RESTARTS) - time.monotonic()))
        crash_loop(kube, pod, restarts)
    watcher.join(WINDOW_S + 15)
    cpu = cpu_seconds(op.proc.pid) - cpu0
    obj = kube.get(IM, "InferenceModel", "crash", namespace)
    degraded = condition(obj, "Degraded")
    assert (degraded.get("status"), degraded.get("reason")) == ("True", "CrashLoopBackOff"), degraded
    assert f"restarted {RESTARTS[-1]} times" in degraded["message"]
    events = [e for e in kube.list("v1", "Event", namespace)
              if e["involvedObject"].get("name") == "crash" and e.get("reason") == "CrashLoopBackOff"]
    print(f"crash loop over {WINDOW_S:.0f}s: {len(writes)} model writes {writes}, {len(events)} Event(s), "
          f"operator CPU {cpu:.2f}s")
    assert len(events) == 1 and int(events[0].get("count") or 1) == 1  # one Warning, not one per restart
    # one status write per change the user can see (Ready, then each restart count), plus slack
    assert 1 <= len(writes) <= 2 * len(RESTARTS) + 2, writes
    assert must_get(kube, "apps/v1", "Deployment", "crash-main", namespace)["metadata"]["generation"] == generation
    assert cpu < 0.25 * WINDOW_S, f"operator used {cpu:.1f} CPU-s in {WINDOW_S:.0f}s"
