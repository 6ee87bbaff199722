"""Replicas over several nodes: the LeaderWorkerSet manifest, the workload choice, and the
controller refusing a multi-node placement when the LWS API is not installed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from model_cases import make_model

from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import (
    BuildContext,
    ChosenPlacement,
    ModelRef,
    Settings,
    build_children,
)
from deepserve.operator.builders.leaderworkerset import (
    LWS_API_VERSION,
    MASTER_PORT,
    build_leaderworkerset,
    choose_workload,
)
from deepserve.operator.builders.repository import engine_options
from deepserve.operator.controller import reconcile
from deepserve.operator.controller.planning import PlanOutcome

pytestmark = pytest.mark.unit
MULTI = ChosenPlacement("h200", "nvidia-h200-sxm-141gb", 16, 8, "bf16", {"pool": "h200"},
                        pipeline_parallel=2, nodes_per_replica=2)
SINGLE = ChosenPlacement("h200", "nvidia-h200-sxm-141gb", 8, 8, "bf16")


def _ctx(placement: ChosenPlacement, replicas: int = 3) -> BuildContext:
    view = InferenceModelSpec.from_dict(make_model().obj()["spec"])
    return BuildContext(ModelRef("big", "team-a", "uid-1"), view, placement, Settings(),
                        {v.name: replicas for v in view.versions})


def test_workload_follows_nodes_per_replica() -> None:
    assert choose_workload(SINGLE) == "Deployment"
    assert choose_workload(MULTI) == "LeaderWorkerSet"
    assert choose_workload({"nodesPerReplica": 2}) == "LeaderWorkerSet"
    assert choose_workload({"pool": "x"}) == "Deployment"  # placements written before #18
    kinds = [o["kind"] for o in build_children(_ctx(MULTI))]
    assert "LeaderWorkerSet" in kinds and "Deployment" not in kinds
    assert "Deployment" in [o["kind"] for o in build_children(_ctx(SINGLE))]


def test_leaderworkerset_groups_restart_whole_and_scale_by_group() -> None:
    lws = build_leaderworkerset(_ctx(MULTI, replicas=3), "main")
    assert lws["apiVersion"] == LWS_API_VERSION and lws["kind"] == "LeaderWorkerSet"
    assert lws["metadata"]["ownerReferences"][0]["kind"] == "InferenceModel"
    spec = lws["spec"]
    assert spec["replicas"] == 3  # groups, one per replica: what the scale subresource counts
    group = spec["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = group["leaderTemplate"], group["workerTemplate"]
    triton, ranks = leader["spec"]["containers"][0], worker["spec"]["containers"][0]
    for container in (triton, ranks):  # one node's GPUs per pod, not the replica's 16
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert leader["spec"]["nodeSelector"] == worker["spec"]["nodeSelector"] == {"pool": "h200"}
    assert {p["name"] for p in triton["ports"]} >= {"http", "grpc", "ranks"}
    assert ranks["ports"] == [] and "readinessProbe" not in ranks  # Services reach leaders only
    assert ranks["command"] == ["python", "-m", "deepserve.engine.parallel.node"]
    env = {e["name"]: e.get("value") for e in ranks["env"]}
    assert env["DEEPSERVE_MASTER_PORT"] == str(MASTER_PORT)
    options = json.loads(env["DEEPSERVE_ENGINE_OPTIONS"])
    assert (options["tensor_parallel"], options["pipeline_parallel"]) == (8, 2)
    assert leader["metadata"]["labels"]["deepserve.io/role"] == "leader"
    assert worker["metadata"]["labels"]["deepserve.io/role"] == "worker"


def test_engine_options_carry_pipeline_parallel() -> None:
    ctx = _ctx(MULTI)
    options = engine_options(ctx, ctx.spec.versions[0])
    assert (options.tensor_parallel, options.pipeline_parallel) == (8, 2)


def _decide(monkeypatch: pytest.MonkeyPatch, chosen: ChosenPlacement, **settings: Any) -> Any:
    outcome = PlanOutcome(chosen, "Chose pool h200 over 2 nodes")
    monkeypatch.setattr(reconcile, "plan", lambda *args, **kwargs: outcome)
    model = make_model("big", "team-a").obj()
    model["metadata"]["uid"] = "uid-1"
    return reconcile.decide(model, [], Settings(**settings))


def test_multi_node_without_lws_is_not_scheduled_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    decision = _decide(monkeypatch, MULTI)
    assert decision.children == () and decision.plan.chosen is None
    assert decision.plan.reason.startswith("LeaderWorkerSetNotInstalled: the placement needs 2 nodes")
    assert "leaderworkersets.leaderworkerset.x-k8s.io" in decision.plan.reason
    served = _decide(monkeypatch, MULTI, leaderworkerset=True)
    assert "LeaderWorkerSet" in [c["kind"] for c in served.children]
    single = _decide(monkeypatch, SINGLE)
    assert "Deployment" in [c["kind"] for c in single.children]


def test_pipeline_parallel_beyond_the_layers_is_not_scheduled_and_a_fitting_one_runs() -> None:
    from deepserve.operator.controller.planning import plan
    from deepserve.operator.placement import PoolOffer

    pools = [PoolOffer("a100", "nvidia-a100-sxm4-80gb", 8, 2, 16, 1.80, max_nodes=2)]
    deep = InferenceModelSpec.from_dict(make_model().engine(pipelineParallel=4).obj()["spec"])
    refused = plan(deep, pools, None, True)  # builtin tiny-llama has 2 layers
    assert refused.chosen is None
    assert refused.reason.startswith(
        "InvalidParallelism: spec.engine.pipelineParallel: 4 stages exceed the model's 2 layers")
    both = InferenceModelSpec.from_dict(
        make_model().engine(tensorParallel=2, pipelineParallel=2).obj()["spec"])
    chosen = plan(both, pools, None, True).chosen
    assert chosen is not None
    assert (chosen.tensor_parallel, chosen.pipeline_parallel, chosen.gpus_per_replica) == (2, 2, 4)
