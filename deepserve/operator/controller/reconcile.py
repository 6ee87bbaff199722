"""One idempotent reconcile: read -> decide -> ensure children -> one status write.

``decide`` is pure; ``reconcile`` only orchestrates calls on a :class:`ChildWriter`
(the Kube seam in production, an in-memory fake in unit tests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from deepserve.operator.api.crds import API_VERSION
from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import BuildContext, ModelRef, Settings, build_children
from deepserve.operator.builders.leaderworkerset import choose_workload, lws_missing_reason
from deepserve.operator.controller.observed import ChildRef, DeploymentState, PodState, marker_of
from deepserve.operator.controller.planning import PlanOutcome, plan
from deepserve.operator.controller.status import StatusInputs, compute_status
from deepserve.operator.controller.usage_credentials import UsageCredentials
from deepserve.operator.kube import KubeError

log = logging.getLogger(__name__)

Event = tuple[str, str, str]  # (type, reason, message)


class ChildWriter(Protocol):
    """The writes a reconcile needs."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None,
               uid: str | None = None) -> bool: ...
    def patch_status(self, api_version: str, kind: str, name: str, namespace: str | None,
                     status: dict[str, Any]) -> dict[str, Any]: ...


REFUSED_STATUSES = (400, 403, 422)  # BadRequest, Forbidden (quota, policy), Invalid


class ChildRejected(RuntimeError):
    """The API server refused a child object: an expected failure, reported in status and
    an Event and retried with backoff, never a traceback.

    ``status`` and ``message`` come from the writer's error (KubeError in production).
    """

    def __init__(self, kind: str, name: str, status: int, message: str) -> None:
        super().__init__(f"{kind} {name}: {message}")
        self.kind, self.name, self.status, self.message = kind, name, status, message


# A 422 that names no fault of the object: kube-apiserver answers "Invalid" when its ClusterIP
# or NodePort allocator cannot reach etcd ('spec.clusterIPs: Invalid value: [""]: failed to
# allocate IP: rpc error: code = Unavailable ...', seen with etcd restarting mid-reconcile).
STORAGE_UNAVAILABLE = ("rpc error: code = Unavailable", "rpc error: code = DeadlineExceeded",
                       "etcdserver: request timed out", "etcdserver: leader changed")


def _refusal(obj: dict[str, Any], error: Exception) -> ChildRejected | None:
    """The refusal ``error`` is, or None when it is not one (then it is retried as a transient
    failure: a storage outage surfaced as a 422 is raised as a 503, never reported as a
    rejected child with a Warning Event and a long backoff)."""
    status = getattr(error, "status", None)
    if status not in REFUSED_STATUSES:
        return None
    message = str(getattr(error, "message", error))
    if any(m in message for m in STORAGE_UNAVAILABLE):
        raise KubeError(503, "ServiceUnavailable", message[:2000]) from error
    return ChildRejected(obj["kind"], obj["metadata"]["name"], int(status or 0),
                         str(getattr(error, "message", error))[:2000])


@dataclass
class Observed:
    """A snapshot of one model and what it owns, from the operator's indexes."""

    model: dict[str, Any]
    children: dict[tuple[str, str], ChildRef] = field(default_factory=dict)
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    pods: tuple[PodState, ...] = ()
    pools: list[Any] = field(default_factory=list)
    pool_tolerations: dict[str, tuple[dict[str, str], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What the model should look like now."""

    spec: InferenceModelSpec | None
    spec_error: str | None
    plan: PlanOutcome | None
    replicas: dict[str, int]
    total: int
    children: tuple[dict[str, Any], ...]


@dataclass
class Result:
    """What a reconcile did."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    events: list[Event] = field(default_factory=list)
    placed: tuple[str, int] | None = None  # (pool, GPUs) when this reconcile made a new placement
    failure: Exception | None = None  # a child write failed: in status already; the caller raises it


def needs_placement(model: dict[str, Any], status: dict[str, Any] | None = None) -> bool:
    """Whether the next reconcile plans afresh (no placement yet, or the spec it was made for changed)."""
    previous = ((status if status is not None else model.get("status")) or {}).get("placement") or None
    return previous is None or previous.get("requestDigest") != placement_digest(model.get("spec") or {})


def split_replicas(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Replicas per version: proportional to weight, rounded up, at least 1 each while total > 0.

    Every version keeps one replica so its own Service answers (smoke tests of a canary).
    """
    if total == 0:
        return dict.fromkeys(weights, 0)
    return {v: max(1, math.ceil(total * w / 100)) for v, w in weights.items()}


def digest(obj: Any) -> str:
    """Stable short digest of JSON data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def placement_digest(spec: dict[str, Any]) -> str:
    """Digest of the spec fields placement depends on; scaling and weights keep the pool."""
    return digest({k: spec.get(k) for k in ("source", "engine", "resources", "placement")})


def move_target(model: dict[str, Any], settings: Settings) -> str | None:
    """The pool the autoscaler found room on when the planned one is full, if moving is allowed."""
    if not settings.allow_pool_move:
        return None
    st = model.get("status") or {}
    suggested = (st.get("scaling") or {}).get("suggestedPool")
    current = (st.get("placement") or {}).get("pool")
    return suggested if suggested and current and suggested != current else None


def decide(model: dict[str, Any], pools: list[Any], settings: Settings,
           pool_tolerations: dict[str, tuple[dict[str, str], ...]] | None = None,
           move_to: str | None = None) -> Decision:
    """Parse the spec, plan placement and build every child object.

    ``move_to``: re-place on this pool (the autoscaler's ``suggestedPool``) if the planner
    agrees it serves the model; otherwise the placement stays.
    """
    md, raw = model["metadata"], model.get("spec") or {}
    try:
        spec = InferenceModelSpec.from_dict(raw)
    except SpecError as e:
        return Decision(None, str(e), None, {}, 0, ())
    previous = ((model.get("status") or {}).get("placement")) or None
    outcome = plan(spec, pools, previous, needs_placement(model), pool_tolerations)
    if move_to and previous and not outcome.changed:
        only = dataclasses.replace(spec, placement=dataclasses.replace(spec.placement, allowed_pools=(move_to,)))
        moved = plan(only, pools, None, True, pool_tolerations)
        if moved.chosen is not None:
            outcome = dataclasses.replace(moved, reason=f"Moved from pool {previous.get('pool')}: it has no room "
                                                        f"for the replicas load needs; {moved.reason}")
    outcome = _name_unknown_pools(outcome, spec.placement.allowed_pools, pools)
    total = spec.scaling.desired()
    replicas = split_replicas(total, {v.name: v.weight for v in spec.versions})
    if outcome.chosen is None:
        return Decision(spec, None, outcome, replicas, total, ())
    if choose_workload(outcome.chosen) == "LeaderWorkerSet" and not settings.leaderworkerset:
        unserved = dataclasses.replace(outcome, chosen=None, reason=lws_missing_reason(outcome.chosen))
        return Decision(spec, None, unserved, replicas, total, ())
    ctx = BuildContext(ModelRef(md["name"], md["namespace"], md["uid"]), spec, outcome.chosen, settings, replicas)
    return Decision(spec, None, outcome, replicas, total, tuple(build_children(ctx)))


def _name_unknown_pools(outcome: PlanOutcome, allowed: tuple[str, ...], pools: list[Any]) -> PlanOutcome:
    """Say which names in spec.placement.allowedPools match no pool (a typo, or a pool not yet
    discovered): the reason of Scheduled=False when nothing was placed, a note otherwise."""
    known = sorted({p.name for p in pools})
    unknown = [n for n in allowed if n not in known]
    if not unknown or not outcome.changed:
        return outcome
    names = ", ".join(unknown)
    listed = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "") if known else "none"
    note = f"spec.placement.allowedPools: no pool named {names} exists (known pools: {listed})"
    if outcome.chosen is None:
        return dataclasses.replace(outcome, reason=f"UnknownPool: {note}; {outcome.reason}")
    return dataclasses.replace(outcome, reason=f"{outcome.reason}; {note}")


AppliedCache = dict[tuple[str, str, str], tuple[str, str, float]]  # (ns, kind, name) -> (digest, marker, when)
PENDING_WATCH_S = 15.0  # how long a write may take to show up in the watch cache


def older_marker(seen: str, written: str) -> bool:
    """Whether the watched marker predates the one our own write returned (a lagging index)."""
    if seen[:1] != written[:1]:
        return False
    try:
        return int(seen[1:]) < int(written[1:])
    except ValueError:
        return False


def _needs_apply(seen: ChildRef | None, cached: tuple[str, str, float] | None, want: str,
                 clock: float) -> tuple[bool, str | None]:
    """Whether to apply, and the drift it corrects (None when there is none)."""
    if cached is None or cached[0] != want:
        return True, None  # first sight since start, or the desired object changed
    if seen is None:
        if clock - cached[2] < PENDING_WATCH_S:
            return False, None  # our create has not reached the watch cache yet
        return True, "recreated deleted"
    if seen.marker == cached[1] or older_marker(seen.marker, cached[1]):
        return False, None
    return True, "restored hand-edited"


def ensure_children(decision: Decision, observed: Observed, writer: ChildWriter, applied: AppliedCache,
                    result: Result, clock: float) -> None:
    """Apply what is missing, changed or hand-edited; delete what is no longer wanted."""
    ns = observed.model["metadata"]["namespace"]
    wanted: set[tuple[str, str]] = set()
    for obj in decision.children:
        key = (obj["kind"], obj["metadata"]["name"])
        wanted.add(key)
        want = digest(obj)
        apply, drift = _needs_apply(observed.children.get(key), applied.get((ns, *key)), want, clock)
        if not apply:
            continue
        if drift:
            result.events.append(("Warning", "DriftCorrected", f"{drift} {key[0]} {key[1]}"))
        try:
            written = writer.apply(obj)
        except Exception as e:
            refused = _refusal(obj, e)
            if refused is None:
                raise
            raise refused from e
        applied[(ns, *key)] = (want, marker_of(written), clock)
        result.applied.append(f"{key[0]}/{key[1]}")
    if decision.spec is None and decision.spec_error:
        return  # never delete children because of a spec the operator cannot read
    for key, ref in observed.children.items():
        if key not in wanted:
            writer.delete(ref.api_version, ref.kind, ref.name, ns, uid=ref.uid)
            applied.pop((ns, *key), None)
            result.deleted.append(f"{ref.kind}/{ref.name}")


def ensure_usage_credential(credentials: UsageCredentials, model: dict[str, Any], writer: ChildWriter,
                            result: Result, clock: float) -> None:
    """Apply the model's usage write-credential Secret when it is due (usage_credentials.py);
    it goes before the Deployments so no engine pod waits for its volume."""
    md = model["metadata"]
    due = credentials.wanted(ModelRef(md["name"], md["namespace"], md["uid"]), clock)
    if due is None:
        return
    obj, changed = due
    try:
        writer.apply(obj)
    except Exception as e:
        refused = _refusal(obj, e)
        if refused is None:
            raise
        raise refused from e
    credentials.applied(obj, md["uid"], clock)
    if changed:
        result.applied.append(f"Secret/{obj['metadata']['name']}")


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``old`` into ``new`` (nulls remove stale keys)."""
    out: dict[str, Any] = {}
    for k in old:
        if k not in new:
            out[k] = None
    for k, v in new.items():
        o = old.get(k)
        if isinstance(v, dict) and isinstance(o, dict):
            sub = merge_patch(o, v)
            if sub:
                out[k] = sub
        elif v != o:
            out[k] = v
    return out


DecisionCache = dict[str, tuple[str, Decision]]  # model uid -> (key, decision)


def _decide_cached(model: dict[str, Any], observed: Observed, settings: Settings,
                   cache: DecisionCache | None) -> Decision:
    """decide(), memoised per model on (generation, kept placement): watch events of owned
    objects rerun the reconcile often, and rebuilding every manifest each time costs CPU."""
    md = model["metadata"]
    move_to = move_target({**model, "status": {**(model.get("status") or {}),
                                               "scaling": (observed.model.get("status") or {}).get("scaling")}},
                          settings)
    placed = ((model.get("status") or {}).get("placement") or {}).get("pool")
    offered = any(p.name == placed for p in observed.pools)  # a deleted pool invalidates the kept plan
    key = digest([md.get("generation"), (model.get("status") or {}).get("placement"), move_to, offered])
    hit = cache.get(md["uid"]) if cache is not None else None
    if hit is not None and hit[0] == key:
        return hit[1]
    decision = decide(model, observed.pools, settings, observed.pool_tolerations, move_to)
    if cache is not None and decision.plan is not None and decision.plan.chosen is not None:
        cache[md["uid"]] = (key, decision)
    return decision


def reconcile(observed: Observed, writer: ChildWriter, settings: Settings, applied: AppliedCache, now: str,
              last_status: dict[str, Any] | None = None, *, clock: float = 0.0,
              decisions: DecisionCache | None = None,
              credentials: UsageCredentials | None = None) -> tuple[Result, dict[str, Any]]:
    """Run one reconcile; returns what it did and the status now in effect.

    A failed child write is reported in status and returned in ``Result.failure`` (after the
    status write, so its Events can be posted) for the caller to raise and retry.

    ``clock`` is a monotonic time (seconds) used to wait for our own writes to reach the
    watch cache; ``decisions`` memoises decide() across calls; ``credentials`` (when the
    operator has an ingest key) keeps each model's usage write-credential Secret applied.
    """
    model = observed.model
    md = model["metadata"]
    result = Result()
    old = last_status if last_status is not None else (model.get("status") or {})
    # decide from the newest status this process knows (the watched body may lag our writes)
    decision = _decide_cached({**model, "status": old}, observed, settings, decisions)
    failure: Exception | None = None
    chosen = decision.plan.chosen if decision.plan is not None else None
    if chosen is not None and decision.plan is not None and decision.plan.changed:
        result.placed = (chosen.pool, decision.total * chosen.gpus_per_replica)
    try:
        if credentials is not None and decision.spec is not None:
            ensure_usage_credential(credentials, model, writer, result, clock)
        ensure_children(decision, observed, writer, applied, result, clock)
    except Exception as e:  # reported in status and returned, so the caller posts Events and retries
        failure = e
    inputs = StatusInputs(
        name=md["name"], namespace=md["namespace"], generation=int(md.get("generation", 1)), now=now,
        cluster_domain=settings.cluster_domain, spec_error=decision.spec_error, plan=decision.plan,
        apply_error=str(failure)[:2000] if failure and not isinstance(failure, ChildRejected) else None,
        child_rejected=str(failure) if isinstance(failure, ChildRejected) else None,
        weights={v.name: v.weight for v in decision.spec.versions} if decision.spec else {},
        desired=decision.replicas, total_desired=decision.total, deployments=observed.deployments,
        pods=observed.pods, previous=old,
    )
    status = compute_status(inputs)
    if decision.plan is not None and "placement" in status:
        status["placement"]["requestDigest"] = placement_digest(model.get("spec") or {})
    _decision_events(decision, old, result)
    _health_events(decision, old, status, result)
    patch = merge_patch(old, status)
    if patch:
        writer.patch_status(API_VERSION, "InferenceModel", md["name"], md["namespace"], patch)
        result.status_written = True
    if result.applied and old.get("observedGeneration"):  # creation itself is no decision worth an Event
        result.events.append(("Normal", "Applied", "applied " + ", ".join(result.applied)))
    if result.deleted:
        result.events.append(("Normal", "Pruned", "deleted " + ", ".join(result.deleted)))
    result.failure = failure
    return result, status


def _decision_events(decision: Decision, old: dict[str, Any], result: Result) -> None:
    before = (old.get("placement") or {})
    if decision.spec_error:
        was: dict[str, Any] = next((c for c in old.get("conditions", []) if c.get("type") == "Degraded"), {})
        if was.get("reason") != "InvalidSpec":
            result.events.append(("Warning", "InvalidSpec", decision.spec_error))
        return
    p = decision.plan
    if p is None:
        return
    if p.chosen is None and before.get("reason") != p.reason:
        result.events.append(("Warning", p.reason.split(":", 1)[0] or "NoPoolFits", p.reason))
    elif p.chosen is not None and before.get("pool") != p.chosen.pool:
        result.events.append(("Normal", "Placed", f"pool {p.chosen.pool} ({p.chosen.accelerator_id}), "
                                                  f"{p.chosen.gpus_per_replica} GPU(s)/replica: {p.reason}"))


def _degraded(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) or [] if c.get("type") == "Degraded"), {})


def _health_events(decision: Decision, old: dict[str, Any], new: dict[str, Any], result: Result) -> None:
    """A Warning Event when the model becomes Degraded or the reason changes (not per restart)."""
    if decision.spec_error or decision.plan is None or decision.plan.chosen is None:
        return  # refusals of the spec or of placement have their own Events
    now, was = _degraded(new), _degraded(old)
    if now.get("status") == "True" and (was.get("status") != "True" or was.get("reason") != now.get("reason")):
        result.events.append(("Warning", now.get("reason") or "Degraded", now.get("message", "")))
