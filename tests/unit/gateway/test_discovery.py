"""Routes from plain API objects: versions, weights in effect, aliases, which pods count."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from deepserve.operator.builders.context import LABEL_MODEL, LABEL_VERSION, MANAGED_BY
from deepserve.operator.gateway.discovery import KubeDiscovery, routes_from_objects
from deepserve.operator.gateway.routing import VersionTarget

pytestmark = pytest.mark.unit


def model(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team", "labels": {"tier": "gold"}},
            "spec": {"source": {"uri": "builtin://tiny-llama"}, **spec}, "status": status or {}}


def pod(name: str, model_name: str, version: str, ip: str | None, ready: bool = True,
        deleting: bool = False, namespace: str = "team") -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {
        "app.kubernetes.io/managed-by": MANAGED_BY, LABEL_MODEL: model_name, LABEL_VERSION: version}}
    if deleting:
        md["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": md, "status": status}


def test_versions_weights_in_effect_aliases_and_only_ready_pods() -> None:
    models = [
        model("chat", {"versions": [{"name": "a", "weight": 90}, {"name": "b", "weight": 10}],
                       "aliases": ["chat-alias"]},
              {"versions": [{"name": "a", "weight": 100}, {"name": "b", "weight": 0}]}),
        model("plain", {}),
        model("broken", {"versions": [{"name": "a", "weight": 50}]}),  # weights do not sum to 100
    ]
    pods = [
        pod("chat-a-1", "chat", "a", "10.0.0.2"),
        pod("chat-a-2", "chat", "a", "10.0.0.1"),
        pod("chat-a-3", "chat", "a", "10.0.0.3", ready=False),
        pod("chat-a-4", "chat", "a", "10.0.0.4", deleting=True),
        pod("chat-b-1", "chat", "b", None),  # Ready but no IP yet
        pod("chat-b-2", "chat", "b", "10.0.9.9", namespace="elsewhere"),  # another namespace's pod
        pod("plain-1", "plain", "main", "10.0.1.1"),
    ]
    routes = {r.full_name: r for r in routes_from_objects(models, pods, port=9000, kserve_port=8000)}
    assert set(routes) == {"team/chat", "team/plain"}  # the invalid model is left out
    chat = routes["team/chat"]
    assert chat.aliases == ("chat-alias",) and chat.labels == {"tier": "gold"}
    assert chat.versions == (
        VersionTarget("a", 100, ("http://10.0.0.1:9000", "http://10.0.0.2:9000"),
                      ("http://10.0.0.1:8000", "http://10.0.0.2:8000")),
        VersionTarget("b", 0),
    )
    assert routes["team/plain"].versions == (
        VersionTarget("main", 100, ("http://10.0.1.1:9000",), ("http://10.0.1.1:8000",)),)


class _ListOnly:
    """The two reads discovery makes, answered from plain objects (a Kube seam fake)."""

    def __init__(self, models: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        self.objects = {"InferenceModel": models, "Pod": pods}

    def list(self, _api: str, kind: str, _ns: str | None, **_kw: Any) -> list[dict[str, Any]]:
        return self.objects[kind]


def test_first_routes_are_applied_before_start_returns() -> None:
    """A (re)started gateway must not answer 404 for an existing model while its first poll runs."""
    kube = _ListOnly([model("plain", {})], [pod("plain-1", "plain", "main", "10.0.1.1")])
    seen: list[tuple[str, list[str]]] = []
    discovery = KubeDiscovery(kube, ["team"], every_s=3600)  # type: ignore[arg-type]
    discovery.start(lambda routes: seen.append((threading.current_thread().name,
                                                [r.full_name for r in routes])))
    try:  # applied by the caller (before the gateway serves), not later by the poll thread
        assert seen == [(threading.current_thread().name, ["team/plain"])]
    finally:
        discovery.stop()
