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
