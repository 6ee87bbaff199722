"""Small projections of observed objects, kept in the operator's indexes (memory stays low)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepserve.operator.builders.context import LABEL_MODEL, LABEL_VERSION

MARKER_BY_GENERATION = {"Deployment", "PodDisruptionBudget", "HTTPRoute"}
# Waiting reasons of a container that will not start without a change (kubelet's own words).
_BAD_WAITING = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                "InvalidImageName", "CreateContainerError", "RunContainerError", "ErrImageNeverPull",
                "PreStartHookError", "PostStartHookError"}
_DETAIL_CHARS = 600  # of a termination message (the last lines the engine logged)


@dataclass(frozen=True)
class ChildRef:
    """An owned object as last seen: identity plus a change marker.

    ``marker`` is metadata.generation for kinds that have one (only spec changes bump it),
    else resourceVersion; a marker the operator did not write means a hand edit.
    """

    api_version: str
    kind: str
    name: str
    uid: str
    marker: str

    @property
    def key(self) -> tuple[str, str]:
        """(kind, name): unique within a model's namespace."""
        return (self.kind, self.name)


@dataclass(frozen=True)
class DeploymentState:
    """What status needs from a Deployment."""

    version: str
    generation: int
    observed_generation: int
    replicas: int
    ready: int
    updated: int
    available: int
    deadline_exceeded: bool
    message: str


@dataclass(frozen=True)
class PodState:
    """What status needs from a pod."""

    name: str
    version: str
    phase: str
    node: str
    ready: bool
    unschedulable: str | None
    waiting_reason: str | None  # why it fails, one CamelCase word (CrashLoopBackOff, OOMKilled, ...)
    failure: str = ""  # what the kubelet said: waiting message, restarts, last exit code and message
    restarts: int = 0


def marker_of(body: dict[str, Any]) -> str:
    """The change marker of an object body (see ChildRef)."""
    md = body.get("metadata", {})
    if body.get("kind") in MARKER_BY_GENERATION:
        return f"g{md.get('generation', 0)}"
    return f"r{md.get('resourceVersion', '')}"


def child_ref(body: dict[str, Any]) -> ChildRef:
    """Project an owned object."""
    md = body.get("metadata", {})
    return ChildRef(body.get("apiVersion", ""), body.get("kind", ""), md.get("name", ""), md.get("uid", ""),
                    marker_of(body))


def owner_key(body: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, model) of an owned object, from its labels."""
    md = body.get("metadata", {})
    model = (md.get("labels") or {}).get(LABEL_MODEL)
    return (md.get("namespace", ""), model) if model else None


def deployment_state(body: dict[str, Any]) -> DeploymentState:
    """Project a Deployment."""
    md, spec, st = body.get("metadata", {}), body.get("spec", {}), body.get("status", {}) or {}
    exceeded, message = False, ""
    for c in st.get("conditions", []) or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            exceeded, message = True, c.get("message", "")
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            message = c.get("message", "")
    return DeploymentState(
        version=(md.get("labels") or {}).get(LABEL_VERSION, ""), generation=int(md.get("generation", 0)),
        observed_generation=int(st.get("observedGeneration", 0)), replicas=int(spec.get("replicas", 0) or 0),
        ready=int(st.get("readyReplicas", 0) or 0), updated=int(st.get("updatedReplicas", 0) or 0),
        available=int(st.get("availableReplicas", 0) or 0), deadline_exceeded=exceeded, message=message,
    )


def _terminated_detail(term: dict[str, Any]) -> str:
    code = term.get("exitCode")
    out = f"exit {term.get('reason') or 'Error'} (code {code})"
    message = (term.get("message") or "").strip()
    return f"{out}: {message[-_DETAIL_CHARS:]}" if message else out


def container_failure(cs: dict[str, Any], init: bool = False) -> tuple[str, str] | None:
    """(reason, message) when a container status shows it cannot run, else None.

    A bad waiting reason (CrashLoopBackOff, ImagePullBackOff, ...), or a container that is not
    ready after restarting from a non-zero exit (caught between two crashes), or an init
    container that exited non-zero.
    """
    state, last = cs.get("state") or {}, (cs.get("lastState") or {}).get("terminated") or {}
    waiting, term = state.get("waiting") or {}, state.get("terminated") or {}
    restarts, name = int(cs.get("restartCount", 0) or 0), cs.get("name", "")
    failed_exit = term if term.get("exitCode") not in (None, 0) else last if last.get("exitCode") not in (None, 0) else {}
    parts = [f"{'init ' if init else ''}container {name}"]
    reason = None
    if waiting.get("reason") in _BAD_WAITING:
        reason = waiting["reason"]
        parts.append(f"{reason}" + (f" ({waiting['message']})" if waiting.get("message") else ""))
    elif failed_exit and (init or (restarts > 0 and not cs.get("ready"))):
        reason = failed_exit.get("reason") or "Error"
    if reason is None:
        return None
    if restarts:
        parts.append(f"restarted {restarts} time{'s' if restarts != 1 else ''}")
    if failed_exit:
        parts.append("last " + _terminated_detail(failed_exit))
    return (f"Init{reason}" if init else reason), ", ".join(parts)


def pod_state(body: dict[str, Any]) -> PodState:
    """Project a pod."""
    md, spec, st = body.get("metadata", {}), body.get("spec", {}), body.get("status", {}) or {}
    ready, unsched = False, None
    for c in st.get("conditions", []) or []:
        if c.get("type") == "Ready":
            ready = c.get("status") == "True"
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            unsched = c.get("message") or "Unschedulable"
    failure: tuple[str, str] | None = None
    if st.get("phase") == "Failed":  # evicted, deadline exceeded, node lost
        failure = (st.get("reason") or "PodFailed", st.get("message") or "the pod failed")
    statuses = [(cs, True) for cs in st.get("initContainerStatuses", []) or []]
    statuses += [(cs, False) for cs in st.get("containerStatuses", []) or []]
    for cs, init in statuses:
        failure = failure or container_failure(cs, init)
    restarts = sum(int(cs.get("restartCount", 0) or 0) for cs, _ in statuses)
    return PodState(md.get("name", ""), (md.get("labels") or {}).get(LABEL_VERSION, ""), st.get("phase", ""),
                    spec.get("nodeName", "") or "", ready, unsched, failure[0] if failure else None,
                    failure[1] if failure else "", restarts)
