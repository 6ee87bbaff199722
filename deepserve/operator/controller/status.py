"""The InferenceModel status, computed in one pure function from what was observed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deepserve.operator.builders.context import GRPC_PORT, HTTP_PORT, LABEL_MODEL, METRICS_PORT
from deepserve.operator.controller.observed import DeploymentState, PodState
from deepserve.operator.controller.planning import PlanOutcome

CONDITION_TYPES = ("Ready", "Scheduled", "Progressing", "Degraded")
RECONCILE = "deepserve.operator.controller.reconcile"
AUTOSCALER = "deepserve.operator.autoscaler.io"
# One writer per InferenceModel status field (issue #17.4). The reconcile computes its fields
# here and writes them in one merge patch; it carries status.scaling unchanged so its patch never
# touches it. The autoscaler (autoscaler.io.patch_scaling_status) writes status.scaling only. The
# activator and the gateway's hold-and-wake write spec.scaling.replicas through /scale, no status.
STATUS_OWNERS: dict[str, str] = {
    **dict.fromkeys(("observedGeneration", "conditions", "placement", "replicas", "readyReplicas", "selector",
                     "endpoint", "endpoints", "versions"), RECONCILE),
    "scaling": AUTOSCALER,
}


@dataclass(frozen=True)
class StatusInputs:
    """Everything the status is a function of."""

    name: str
    namespace: str
    generation: int
    now: str  # RFC 3339, used only for conditions that change
    cluster_domain: str = "cluster.local"
    spec_error: str | None = None
    apply_error: str | None = None  # writing a child failed for a passing reason (conflict, timeout, ...)
    child_rejected: str | None = None  # the API server refused a child: "<Kind> <name>: <its message>"
    plan: PlanOutcome | None = None
    weights: dict[str, int] = field(default_factory=dict)  # version -> traffic weight
    desired: dict[str, int] = field(default_factory=dict)  # version -> desired replicas
    total_desired: int = 0
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    pods: tuple[PodState, ...] = ()
    previous: dict[str, Any] = field(default_factory=dict)


def _cond(kind: str, ok: bool | None, reason: str, message: str) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": kind, "status": status, "reason": reason, "message": message[:32000]}


def _version_state(inp: StatusInputs, name: str) -> tuple[dict[str, Any], str | None]:
    """Per-version status and, when the version is failing, why."""
    d = inp.deployments.get(name)
    want = inp.desired.get(name, 0)
    pods = [p for p in inp.pods if p.version == name]
    trouble = next((f"{p.waiting_reason}: pod {p.name}: {p.failure or p.waiting_reason}"
                    for p in pods if p.waiting_reason), None)
    if d is not None and d.deadline_exceeded:
        trouble = trouble or f"ProgressDeadlineExceeded: {d.message}"
    ready = d.ready if d else 0
    if pods:  # the pods' own Ready is fresher than the Deployment's count (the ReplicaSet lags)
        ready = min(ready, sum(1 for p in pods if p.ready))
    updated = d.updated if d else 0
    if trouble:
        state = "Failed"
    elif want == 0:
        state = "ScaledToZero"
    elif d is None or d.observed_generation < d.generation or updated < want or ready < want:
        state = "Pending" if ready == 0 and all(not p.node for p in pods) else "Progressing"
    else:
        state = "Ready"
    entry = {"name": name, "weight": inp.weights.get(name, 0), "deployment": f"{inp.name}-{name}",
             "service": f"{inp.name}-{name}", "replicas": want, "readyReplicas": ready,
             "updatedReplicas": updated, "state": state}
    return entry, trouble


def _placement_status(plan: PlanOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"reason": plan.reason[:4000]}
    if plan.chosen:
        c = plan.chosen
        out.update(pool=c.pool, acceleratorId=c.accelerator_id, gpusPerReplica=c.gpus_per_replica,
                   tensorParallel=c.tensor_parallel, precision=c.precision)
        if c.nodes_per_replica > 1 or c.pipeline_parallel > 1:  # builders.leaderworkerset
            out.update(pipelineParallel=c.pipeline_parallel, nodesPerReplica=c.nodes_per_replica)
        out.update(plan.estimates)
    if plan.rejected:
        out["rejected"] = [{"pool": p, "reason": r[:1000]} for p, r in plan.rejected]
    return out


def _conditions(inp: StatusInputs, versions: list[dict[str, Any]], troubles: list[str]) -> list[dict[str, Any]]:
    if inp.spec_error:
        msg = f"InvalidSpec: {inp.spec_error}"
        return [_cond("Ready", False, "InvalidSpec", msg), _cond("Scheduled", None, "InvalidSpec", msg),
                _cond("Progressing", False, "InvalidSpec", msg), _cond("Degraded", True, "InvalidSpec", msg)]
    plan = inp.plan
    if plan is None or plan.chosen is None:
        reason_word = (plan.reason.split(":", 1)[0] if plan else "NoPlacement") or "NoPoolFits"
        msg = plan.reason if plan else "no placement yet"
        return [_cond("Ready", False, "NotScheduled", msg), _cond("Scheduled", False, reason_word, msg),
                _cond("Progressing", False, reason_word, msg), _cond("Degraded", True, reason_word, msg)]
    c = plan.chosen
    unsched = next((p for p in inp.pods if p.unschedulable), None)
    if unsched:
        scheduled = _cond("Scheduled", False, "Unschedulable", f"pod {unsched.name}: {unsched.unschedulable}")
    else:
        scheduled = _cond("Scheduled", True, "Placed", plan.reason or f"pool {c.pool} ({c.accelerator_id})")
    serving = [v for v in versions if v["replicas"] > 0 and v["weight"] > 0]
    rolling = [v["name"] for v in versions if v["state"] in ("Pending", "Progressing")]
    progressing = (_cond("Progressing", True, "RollingOut", f"versions rolling out: {', '.join(rolling)}")
                   if rolling else _cond("Progressing", False, "RolloutComplete", "all versions up to date"))
    ready_total = sum(v["readyReplicas"] for v in versions)
    if inp.total_desired == 0:
        ready = _cond("Ready", True, "ScaledToZero", "scaled to zero; the first request scales it up")
    elif all(v["readyReplicas"] >= v["replicas"] for v in serving) and serving:
        ready = _cond("Ready", True, "Serving", f"{ready_total}/{inp.total_desired} replicas ready")
    else:
        waiting = [f"{v['name']} {v['readyReplicas']}/{v['replicas']}" for v in serving
                   if v["readyReplicas"] < v["replicas"]]
        ready = _cond("Ready", False, "ReplicasNotReady" if not unsched else "Unschedulable",
                      "waiting for ready replicas: " + ", ".join(waiting))
    if inp.child_rejected:
        msg = f"the API server refused {inp.child_rejected}"
        degraded = _cond("Degraded", True, "ChildRejected", msg)
        progressing = _cond("Progressing", False, "ChildRejected", msg)
        if ready["status"] != "True":
            ready = _cond("Ready", False, "ChildRejected", msg)
    elif inp.apply_error:
        degraded = _cond("Degraded", True, "ApplyFailed", inp.apply_error)
    elif troubles:
        # the real reason (CrashLoopBackOff, ImagePullBackOff, OOMKilled, ...) of the first failure
        word = troubles[0].split(":", 1)[0]
        degraded = _cond("Degraded", True, word, "; ".join(troubles))
        if ready["status"] != "True":
            ready = _cond("Ready", False, word, "; ".join(troubles))
    elif unsched:
        degraded = _cond("Degraded", True, "Unschedulable", scheduled["message"])
    else:
        degraded = _cond("Degraded", False, "AsExpected", "no failures observed")
    return [ready, scheduled, progressing, degraded]


def _with_times(conds: list[dict[str, Any]], inp: StatusInputs) -> list[dict[str, Any]]:
    """Keep lastTransitionTime unless the status flipped; stamp observedGeneration."""
    before = {c.get("type"): c for c in inp.previous.get("conditions", []) or []}
    out = []
    for c in conds:
        prev = before.get(c["type"])
        same = prev is not None and prev.get("status") == c["status"]
        out.append({**c, "observedGeneration": inp.generation,
                    "lastTransitionTime": prev.get("lastTransitionTime", inp.now) if same and prev else inp.now})
    return out


def compute_status(inp: StatusInputs) -> dict[str, Any]:
    """The whole status object for one model."""
    host = f"{inp.name}.{inp.namespace}.svc.{inp.cluster_domain}"
    versions, troubles = [], []
    for name in inp.weights:
        entry, trouble = _version_state(inp, name)
        versions.append(entry)
        if trouble:
            troubles.append(trouble.replace(": ", f": version {name}: ", 1))
    status: dict[str, Any] = {
        "observedGeneration": inp.generation,
        "conditions": _with_times(_conditions(inp, versions, troubles), inp),
        "replicas": inp.total_desired,
        "readyReplicas": sum(v["readyReplicas"] for v in versions),
        "selector": f"{LABEL_MODEL}={inp.name}",
        "versions": versions,
    }
    if inp.plan is not None:
        status["placement"] = _placement_status(inp.plan)
    if inp.previous.get("scaling"):
        # written by the autoscaler, not computed here: carried so the merge patch keeps it
        status["scaling"] = inp.previous["scaling"]
    if not inp.spec_error:
        status["endpoint"] = f"http://{host}:{HTTP_PORT}"
        status["endpoints"] = {"http": f"http://{host}:{HTTP_PORT}", "grpc": f"{host}:{GRPC_PORT}",
                               "metrics": f"http://{host}:{METRICS_PORT}/metrics"}
    return status


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` would change anything (skip the write when not)."""
    return (old or {}) != new

