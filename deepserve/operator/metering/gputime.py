"""GPU-time accounting: GPUs held by Ready pods × seconds, as a pure function of
observed pod snapshots.

Between two successive observations of one pod (t0 < t1) the pod is billed for:

* Ready at both, Ready condition unchanged since before t0 -> all of [t0, t1];
* Ready at both but the condition flipped in between -> [transition, t1] (the moment it
  dropped is unknown, so we under- rather than over-bill);
* Ready at t0, not at t1 -> [t0, transition] (the condition's lastTransitionTime);
* not Ready at t0, Ready at t1 -> [transition, t1];
* first observation, Ready -> [transition, t1].

Because Kubernetes records ``lastTransitionTime`` on the Ready condition, gaps between
observations (operator restarts) are billed exactly, not sampled.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from deepserve.engine.usage import format_time, parse_time
from deepserve.operator.placement.gpus import pod_gpus

_INTERVAL_NS = uuid.UUID("0c7b0a8e-43f4-5a63-a3f0-8f4b1f2d6e01")

#: Labels read from pods by :meth:`PodSnapshot.from_pod` (the operator sets them).
MODEL_LABEL = "deepserve.io/model"
VERSION_LABEL = "deepserve.io/version"
ACCOUNT_LABEL = "deepserve.io/account"
POOL_LABEL = "deepserve.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclasses.dataclass(frozen=True)
class PodSnapshot:
    """One observation of an engine pod: who it serves, what it holds, whether it is Ready."""

    uid: str
    name: str
    namespace: str
    model: str
    version: str
    account: str
    pool: str
    gpus: int
    observed_at: datetime
    ready: bool
    ready_changed_at: datetime | None = None

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any], observed_at: datetime, *,
                 account: str | None = None, pool: str | None = None) -> PodSnapshot | None:
        """Read a Kubernetes pod dict; None if it carries no ``deepserve.io/model`` label.

        ``account`` and ``pool`` override the pod's labels (the operator knows both from
        the InferenceModel and the placement). GPUs are counted by ``placement.gpus.pod_gpus`` (every vendor, MIG slices).
        """
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if MODEL_LABEL not in labels:
            return None
        gpus = pod_gpus(pod)
        ready, changed = False, None
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                ready = cond.get("status") == "True"
                if cond.get("lastTransitionTime"):
                    changed = parse_time(cond["lastTransitionTime"], "lastTransitionTime")
        return cls(
            uid=str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
            name=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")),
            model=str(labels[MODEL_LABEL]), version=str(labels.get(VERSION_LABEL, "")),
            account=account or str(labels.get(ACCOUNT_LABEL, "")),
            pool=pool or str(labels.get(POOL_LABEL, "")),
            gpus=gpus, observed_at=observed_at.astimezone(UTC), ready=ready,
            ready_changed_at=changed,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (timestamps as UTC ISO-8601)."""
        out = dataclasses.asdict(self)
        out["observed_at"] = format_time(self.observed_at)
        out["ready_changed_at"] = (format_time(self.ready_changed_at)
                                   if self.ready_changed_at else None)
        return out

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> PodSnapshot:
        """Inverse of :meth:`to_json_dict`."""
        fields = dict(data)
        fields["observed_at"] = parse_time(fields["observed_at"], "observed_at")
        if fields.get("ready_changed_at"):
            fields["ready_changed_at"] = parse_time(fields["ready_changed_at"], "ready_changed_at")
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class GpuInterval:
    """A span during which a Ready pod held ``gpus`` GPUs of ``pool``."""

    interval_id: str
    pod_uid: str
    pod: str
    namespace: str
    model: str
    version: str
    account: str
    pool: str
    gpus: int
    start: datetime
    end: datetime

    @property
    def gpu_seconds(self) -> float:
        """GPUs × seconds of the interval."""
        return self.gpus * (self.end - self.start).total_seconds()


def _clamp(t: datetime | None, lo: datetime, hi: datetime) -> datetime | None:
    return None if t is None else min(max(t, lo), hi)


def interval_between(prev: PodSnapshot | None, cur: PodSnapshot) -> GpuInterval | None:
    """Return the billable interval ending at ``cur`` (rules in the module docstring)."""
    t1, changed = cur.observed_at, cur.ready_changed_at
    if prev is None:
        start = changed if (cur.ready and changed is not None and changed <= t1) else None
        end = t1 if start is not None else None
    else:
        t0 = prev.observed_at
        if t1 <= t0:
            return None
        bounded = _clamp(changed, t0, t1)
        start = end = None
        if prev.ready and cur.ready:
            start, end = (t0 if changed is None or changed <= t0 else bounded), t1
        elif prev.ready:
            start, end = t0, bounded
        elif cur.ready:
            start, end = bounded, t1
    if start is None or end is None or end <= start or cur.gpus <= 0:
        return None
    key = f"{cur.uid}/{format_time(start)}/{format_time(end)}"
    return GpuInterval(str(uuid.uuid5(_INTERVAL_NS, key)), cur.uid, cur.name, cur.namespace,
                       cur.model, cur.version, cur.account, cur.pool, cur.gpus, start, end)


def gpu_intervals(snapshots: Iterable[PodSnapshot],
                  previous: Mapping[str, PodSnapshot] | None = None) -> list[GpuInterval]:
    """Billable intervals for a series of snapshots (any order, any pods).

    ``previous`` maps pod uid to the last snapshot seen before this series (persisted by
    the ledger), so accounting continues across calls and restarts.
    """
    by_pod: dict[str, list[PodSnapshot]] = {}
    for snap in snapshots:
        by_pod.setdefault(snap.uid, []).append(snap)
    out: list[GpuInterval] = []
    for uid, series in by_pod.items():
        prev = (previous or {}).get(uid)
        for snap in sorted(series, key=lambda s: s.observed_at):
            if prev is not None and snap.observed_at <= prev.observed_at:
                continue
            interval = interval_between(prev, snap)
            if interval is not None:
                out.append(interval)
            prev = snap
    return sorted(out, key=lambda i: (i.start, i.pod_uid))


def hour_floor(t: datetime) -> datetime:
    """The start of the UTC hour containing ``t``."""
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def split_by_hour(start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """Split [start, end) at UTC hour boundaries; return (hour_start, seconds) pairs."""
    parts: list[tuple[datetime, float]] = []
    cursor = start
    while cursor < end:
        hour = hour_floor(cursor)
        boundary = min(end, hour + timedelta(hours=1))
        parts.append((hour, (boundary - cursor).total_seconds()))
        cursor = boundary
    return parts
