"""Small projections of observed objects, kept in the operator's indexes (memory stays low)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepserve.operator.builders.context import LABEL_MODEL, LABEL_VERSION

MARKER_BY_GENERATION = {"Deployment", "PodDisruptionBudget", "HTTPRoute"}
_BAD_WAITING = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                "InvalidImageName", "CreateContainerError"}


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
    waiting_reason: str | None


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


def pod_state(body: dict[str, Any]) -> PodState:
    """Project a pod."""
    md, spec, st = body.get("metadata", {}), body.get("spec", {}), body.get("status", {}) or {}
    ready, unsched = False, None
    for c in st.get("conditions", []) or []:
        if c.get("type") == "Ready":
            ready = c.get("status") == "True"
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            unsched = c.get("message") or "Unschedulable"
    waiting = None
    for cs in st.get("containerStatuses", []) or []:
        reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        if reason in _BAD_WAITING:
            waiting = reason
    return PodState(md.get("name", ""), (md.get("labels") or {}).get(LABEL_VERSION, ""), st.get("phase", ""),
                    spec.get("nodeName", "") or "", ready, unsched, waiting)
