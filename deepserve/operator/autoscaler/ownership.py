"""Who owns an InferenceModel's replica count: deepserve's autoscaler or someone external.

Exactly one writer may own ``spec.scaling.replicas`` (the scale subresource). The rules,
in order:

1. an annotation ``deepserve.io/autoscaler`` of ``external`` or ``deepserve`` decides;
2. a HorizontalPodAutoscaler whose ``scaleTargetRef`` is this InferenceModel makes it
   external (KEDA's ScaledObject works through such an HPA, named ``keda-hpa-*``);
3. if the newest write of the replica field came from a field manager that is not
   deepserve's (``kubectl scale``, ``kubectl edit``, an HPA), it is a manual edit: the
   autoscaler defers for ``manual_hold_s`` after that write, then takes over again. A
   value written when the object was created is a starting point, not an edit.

Edits are found two ways: in ``metadata.managedFields`` (updates of the main resource,
e.g. ``kubectl edit`` or an apply), and by the caller noticing that the replica count
changed to a value deepserve did not write (``manual_since``). The second is needed
because the API server records no managedFields entry for writes through a custom
resource's ``/scale`` subresource (checked on the local cluster: ``kubectl scale`` and
``PUT .../scale`` leave none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

DEEPSERVE = "deepserve"
EXTERNAL = "external"
ANNOTATION = "deepserve.io/autoscaler"
#: Field managers that write replicas on deepserve's behalf.
OWN_MANAGERS = frozenset({"deepserve-autoscaler", "deepserve-activator"})


@dataclass(frozen=True)
class Ownership:
    """The owner of the replica count and why."""

    owner: str  # DEEPSERVE | EXTERNAL
    reason: str
    manager: str | None = None
    since: datetime | None = None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _touches_replicas(entry: Mapping[str, Any]) -> bool:
    if entry.get("subresource") == "scale":
        return True
    fields = entry.get("fieldsV1") or {}
    return "f:replicas" in ((fields.get("f:spec") or {}).get("f:scaling") or {})


def last_replica_writer(managed_fields: Iterable[Mapping[str, Any]]) -> tuple[str, datetime | None] | None:
    """The field manager that wrote the replica count last, and when; None if nobody did."""
    best: tuple[str, datetime | None] | None = None
    for entry in managed_fields:
        if not _touches_replicas(entry):
            continue
        when = _parse_time(entry.get("time"))
        manager = str(entry.get("manager", ""))
        newer = best is None or (when is not None and (best[1] is None or when > best[1]))
        # times have one-second resolution: on a tie, believe the external writer
        tie = best is not None and when is not None and when == best[1] and manager not in OWN_MANAGERS
        if newer or tie:
            best = (manager, when)
    return best


def hpa_targeting(hpas: Iterable[Mapping[str, Any]], model: str) -> str | None:
    """Name of an HPA (same namespace) whose scaleTargetRef is the InferenceModel ``model``."""
    for hpa in hpas:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == "InferenceModel" and ref.get("name") == model:
            return str((hpa.get("metadata") or {}).get("name", ""))
    return None


def detect_owner(model: Mapping[str, Any], hpas: Iterable[Mapping[str, Any]], now: datetime,
                 manual_hold_s: float = 600.0, manual_since: datetime | None = None) -> Ownership:
    """Decide who owns the replica count of ``model`` (a full object with managedFields).

    ``manual_since``: when the caller saw the count change to a value it did not write.
    """
    md = model.get("metadata") or {}
    forced = (md.get("annotations") or {}).get(ANNOTATION)
    if forced in (DEEPSERVE, EXTERNAL):
        return Ownership(forced, f"annotation {ANNOTATION}={forced}")
    hpa = hpa_targeting(hpas, str(md.get("name", "")))
    if hpa:
        who = "KEDA ScaledObject" if hpa.startswith("keda-hpa-") else "HorizontalPodAutoscaler"
        return Ownership(EXTERNAL, f"{who} {hpa} targets this model", manager=hpa)
    if manual_since is not None:
        left = manual_hold_s - (now - manual_since).total_seconds()
        if left > 0:
            return Ownership(EXTERNAL, f"manual edit (replicas changed outside deepserve); autoscaler resumes "
                                       f"in {left:.0f}s", None, manual_since)
    writer = last_replica_writer(md.get("managedFields") or [])
    created = _parse_time(md.get("creationTimestamp"))
    if writer is not None and writer[0] not in OWN_MANAGERS:
        manager, when = writer
        if when is not None and created is not None and (when - created).total_seconds() <= 1:
            return Ownership(DEEPSERVE, "deepserve autoscaler (replicas set at creation)")
        if when is None:
            return Ownership(EXTERNAL, f"replicas set by {manager}", manager, when)
        left = manual_hold_s - (now - when).total_seconds()
        if left > 0:
            return Ownership(EXTERNAL, f"manual edit by {manager}; autoscaler resumes in {left:.0f}s",
                             manager, when)
    return Ownership(DEEPSERVE, "deepserve autoscaler")
