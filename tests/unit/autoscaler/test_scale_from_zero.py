"""The activator's scale-from-zero on a fresh model, whose replica field is still unset."""

from __future__ import annotations

from typing import Any

import pytest

from deepserve.operator.autoscaler.io import scale_from_zero
from deepserve.operator.kube import KubeError

pytestmark = pytest.mark.unit


class UnsetReplicasKube:
    """GET /scale fails as the API server does while spec.scaling.replicas is unset."""

    def __init__(self, min_replicas: int) -> None:
        self.obj = {"metadata": {"name": "chat", "resourceVersion": "42"},
                    "spec": {"scaling": {"minReplicas": min_replicas}}}
        self.puts: list[dict[str, Any]] = []

    def request(self, method: str, path: str, *, body: Any = None, query: Any = None) -> dict[str, Any]:
        if method == "GET":
            raise KubeError(500, "InternalError", 'Internal error occurred: the spec replicas field '
                                                  '".spec.scaling.replicas" does not exist')
        self.puts.append(body)
        return body

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.obj


def test_fresh_model_at_zero_is_scaled_to_one_optimistically() -> None:
    kube = UnsetReplicasKube(min_replicas=0)
    assert scale_from_zero(kube, "ns", "chat") is True  # type: ignore[arg-type]
    assert [(p["spec"]["replicas"], p["metadata"]["resourceVersion"]) for p in kube.puts] == [(1, "42")]


def test_fresh_model_with_replicas_is_left_alone() -> None:
    kube = UnsetReplicasKube(min_replicas=2)
    assert scale_from_zero(kube, "ns", "chat") is False  # type: ignore[arg-type]
    assert kube.puts == []


class RacingKube(UnsetReplicasKube):
    """Each status write elsewhere moves the resourceVersion: the first PUTs conflict."""

    def __init__(self, conflicts: int, scaled_by_other: bool = False) -> None:
        super().__init__(min_replicas=0)
        self.conflicts, self.scaled_by_other = conflicts, scaled_by_other

    def request(self, method: str, path: str, *, body: Any = None, query: Any = None) -> dict[str, Any]:
        if method == "GET":
            return super().request(method, path, body=body, query=query)
        self.puts.append(body)
        if self.conflicts:
            self.conflicts -= 1
            rv = int(self.obj["metadata"]["resourceVersion"]) + 1
            self.obj["metadata"]["resourceVersion"] = str(rv)
            if self.scaled_by_other:
                self.obj["spec"]["scaling"]["replicas"] = 2
            raise KubeError(409, "Conflict", "the object has been modified")
        return body


def test_a_conflict_from_a_status_write_is_retried_on_the_new_version() -> None:
    kube = RacingKube(conflicts=2)
    assert scale_from_zero(kube, "ns", "chat") is True  # type: ignore[arg-type]
    assert [p["metadata"]["resourceVersion"] for p in kube.puts] == ["42", "43", "44"]


def test_a_conflict_because_someone_scaled_up_is_not_retried() -> None:
    kube = RacingKube(conflicts=1, scaled_by_other=True)
    assert scale_from_zero(kube, "ns", "chat") is False  # type: ignore[arg-type]
    assert len(kube.puts) == 1
