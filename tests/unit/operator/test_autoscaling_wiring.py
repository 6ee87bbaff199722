"""The autoscaler as the operator runs it: which models it ticks, its daemon, its flags."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import kopf
import pytest

from deepserve.operator.autoscaler.loop import AutoscalerOptions
from deepserve.operator.commands import operator as operator_cmd
from deepserve.operator.controller import handlers
from deepserve.operator.controller.autoscaling import (
    AutoscalerRounds,
    ModelScaling,
    scaling_enabled,
)

pytestmark = pytest.mark.unit


def model(scaling: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "deepserve.io/v1alpha1", "kind": "InferenceModel",
            "metadata": {"name": "chat", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"source": {"uri": "builtin://tiny-llama"}, "scaling": scaling}, "status": status or {}}


class FakeKube:
    """The calls ModelScaling and one autoscaler tick make (no pods, so no scrapes)."""

    def __init__(self, obj: dict[str, Any], hpas: list[dict[str, Any]] | None = None) -> None:
        self.obj, self.hpas = obj, hpas or []
        self.calls: list[str] = []
        self.status_patches: list[dict[str, Any]] = []

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(f"get {kind}")
        return self.obj

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(f"list {kind}")
        return self.hpas if kind == "HorizontalPodAutoscaler" else []

    def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        raise AssertionError(f"unexpected {method} {path}")

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str | None,
                     status: dict[str, Any]) -> dict[str, Any]:
        self.status_patches.append(status)
        return status


HPA = {"metadata": {"name": "keda-hpa-chat"},
       "spec": {"scaleTargetRef": {"apiVersion": "deepserve.io/v1alpha1", "kind": "InferenceModel", "name": "chat"}}}


def test_only_a_replica_range_or_scale_to_zero_needs_deciding() -> None:
    assert not scaling_enabled(model({})["spec"])  # min 1, max defaults to min
    assert not scaling_enabled(model({"minReplicas": 2, "maxReplicas": 2})["spec"])
    assert scaling_enabled(model({"minReplicas": 1, "maxReplicas": 4})["spec"])
    assert scaling_enabled(model({"minReplicas": 0, "maxReplicas": 1, "scaleToZero": {"enabled": True}})["spec"])
    assert not scaling_enabled({"scaling": {"minReplicas": 1}})  # no source: invalid, the reconcile says so


def test_fixed_model_without_hpa_costs_no_tick() -> None:
    kube = FakeKube(model({"minReplicas": 2, "maxReplicas": 2}))
    scaling = ModelScaling(kube, "ns", "chat", AutoscalerOptions(hpa_every_s=15), clock=lambda: 100.0)  # type: ignore[arg-type]
    assert scaling.step(kube.obj) is None and scaling.step(kube.obj) is None
    assert kube.calls == ["list HorizontalPodAutoscaler"]  # listed once per hpa_every_s, nothing else
    assert kube.status_patches == []


def test_fixed_model_targeted_by_an_hpa_reports_the_external_owner() -> None:
    kube = FakeKube(model({"minReplicas": 2, "maxReplicas": 2}), hpas=[HPA])
    result = ModelScaling(kube, "ns", "chat", AutoscalerOptions()).step(kube.obj)  # type: ignore[arg-type]
    assert result is not None and result.owner.owner == "external" and result.written is None
    assert kube.status_patches[-1]["scaling"]["owner"] == "external"
    assert "KEDA ScaledObject keda-hpa-chat" in kube.status_patches[-1]["scaling"]["ownerReason"]


def test_enabled_model_ticks_and_a_model_made_fixed_drops_its_scaling_status() -> None:
    kube = FakeKube(model({"minReplicas": 0, "maxReplicas": 2, "scaleToZero": {"enabled": True}}))
    scaling = ModelScaling(kube, "ns", "chat", AutoscalerOptions())  # type: ignore[arg-type]
    result = scaling.step(kube.obj)
    assert result is not None and result.owner.owner == "deepserve" and result.status["desiredReplicas"] == 0
    assert kube.status_patches[-1]["scaling"]["owner"] == "deepserve"
    fixed = model({"minReplicas": 1}, status={"scaling": kube.status_patches[-1]["scaling"]})
    assert scaling.step(fixed) is None and scaling.scaler is None
    assert kube.status_patches[-1] == {"scaling": None}  # merge patch: remove the stale block


def _spawning(registry: kopf.OperatorRegistry) -> dict[str, Any]:
    return {h.id: h for h in registry._spawning._handlers}


def test_daemon_is_registered_without_a_finalizer_and_can_be_turned_off() -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, handlers.OperatorOptions(), gateway_api=False)
    daemon = _spawning(registry)["ds_model_loop"]  # autoscaler and periodic resync
    assert daemon.requires_finalizer is False  # deleting a model never waits for the operator
    assert not any(h.requires_finalizer for h in registry._spawning._handlers)
    off = kopf.OperatorRegistry()
    handlers.register(off, handlers.OperatorOptions(autoscaler=None, resync_seconds=0), gateway_api=False)
    assert "ds_model_loop" not in _spawning(off)


def _run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    operator_cmd.register(parser.add_subparsers())
    return parser.parse_args(["operator", "run", *argv])


def test_operator_run_flags() -> None:
    args = _run_args()
    assert (args.autoscale_tick, args.manual_hold, args.allow_pool_move) == (2.0, 600.0, False)
    args = _run_args("--autoscale-tick", "0.5", "--manual-hold", "30", "--allow-pool-move")
    assert (args.autoscale_tick, args.manual_hold, args.allow_pool_move) == (0.5, 30.0, True)
    with pytest.raises(SystemExit):
        _run_args("--manual-hold", "-1")


def test_requests_held_by_the_activator_keep_a_model_from_scaling_to_zero() -> None:
    at_one = {"minReplicas": 0, "maxReplicas": 2, "replicas": 1, "scaleToZero": {"enabled": True, "idleSeconds": 30}}
    clock = [1000.0]
    for held, want in ((0, 0), (4, 2)):  # 4 held at 1 in flight per replica: as many as maxReplicas allows
        kube = FakeKube(model(dict(at_one)))

        def write_scale(method: str, path: str, kube: FakeKube = kube, **kw: Any) -> dict[str, Any]:
            kube.obj["spec"]["scaling"]["replicas"] = kw["body"]["spec"]["replicas"]
            return dict(kw["body"])

        kube.request = write_scale  # type: ignore[method-assign]
        scaling = ModelScaling(kube, "ns", "chat", AutoscalerOptions(), clock=lambda: clock[0],  # type: ignore[arg-type]
                               held=lambda ns, name, n=held: n if (ns, name) == ("ns", "chat") else 0)
        for _ in range(40):  # 40 s with no pods and no requests answered: idle
            result = scaling.step(kube.obj)
            clock[0] += 1
        assert result is not None and result.status["desiredReplicas"] == want, (held, result.status)


def test_activator_flags_are_checked() -> None:
    args = _run_args("--activator", "team-a=http://activator.team-a:8080/metrics")
    assert args.activator == ["team-a=http://activator.team-a:8080/metrics"]
    for bad in ("team-a", "=http://x/metrics", "team-a=activator:8080"):
        args = _run_args("--activator", bad)
        with pytest.raises(SystemExit, match="expected NAMESPACE=http"):
            operator_cmd._run(args)


def test_shared_rounds_tick_each_registered_model_until_it_leaves() -> None:
    """One loop ticks every model's ModelScaling with its latest snapshot; removed or gone models stop."""
    steps: list[tuple[str, Any]] = []
    snapshots: dict[tuple[str, str], dict[str, Any]] = {("ns", "a"): {"v": 1}, ("ns", "b"): {"v": 2}}

    class Counting:
        def __init__(self, name: str) -> None:
            self.name = name

        def step(self, model: Any) -> None:
            steps.append((self.name, model["v"]))

    async def scenario() -> None:
        rounds = AutoscalerRounds(0.0, snapshots.get)
        a, b = Counting("a"), Counting("b")
        rounds.add(("ns", "a"), a)  # type: ignore[arg-type]
        rounds.add(("ns", "b"), b)  # type: ignore[arg-type]
        while len(steps) < 4:
            await asyncio.sleep(0.001)
        rounds.remove(("ns", "a"), a)  # type: ignore[arg-type]
        del snapshots[("ns", "b")]  # the model is gone: no tick, though still registered
        seen = len(steps)
        for _ in range(20):
            await asyncio.sleep(0.001)
        assert len(steps) <= seen + 2  # at most the round in flight
        rounds.remove(("ns", "b"), b)  # type: ignore[arg-type]
        for _ in range(100):  # nothing left to tick: the loop ends
            if rounds._task is not None and rounds._task.done():
                break
            await asyncio.sleep(0.001)
        assert rounds._task is not None and rounds._task.done()

    asyncio.run(scenario())
    assert {("a", 1), ("b", 2)} <= set(steps)
