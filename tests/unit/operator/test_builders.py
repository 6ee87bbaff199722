"""Pure builders: the objects a user's pods and traffic rely on."""

from __future__ import annotations

from typing import Any

import pytest
from model_cases import make_model

from deepserve.engine.triton.repository import read_options_from_config
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import (
    BuildContext,
    ChosenPlacement,
    ModelRef,
    Settings,
    build_children,
    build_deployment,
    build_httproute,
    build_pdb,
    build_repository_configmap,
)
from deepserve.operator.builders.deployment import termination_grace_seconds

pytestmark = pytest.mark.unit
POOL = ChosenPlacement("a100", "nvidia-a100-sxm4-80gb", 2, 2, "bf16", {"cloud.google.com/gke-nodepool": "a100"},
                       ({"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},))


def ctx_for(spec: dict[str, Any], placement: ChosenPlacement = POOL, replicas: dict[str, int] | None = None,
            **settings: Any) -> BuildContext:
    view = InferenceModelSpec.from_dict(spec)
    reps = replicas or {v.name: 1 for v in view.versions}
    return BuildContext(ModelRef("llama", "team-a", "uid-1"), view, placement, Settings(**settings), reps)


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_deployment_runs_triton_on_the_chosen_pool() -> None:
    dep = build_deployment(ctx_for(make_model().obj()["spec"], replicas={"main": 3}), "main")
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert dep["metadata"]["name"] == "llama-main" and dep["spec"]["replicas"] == 3
    assert [p["containerPort"] for p in c["ports"]] == [8000, 8001, 8002]
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" == c["resources"]["requests"]["nvidia.com/gpu"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "a100"}
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["nvidia.com/gpu", "dedicated"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"  # the engine's last words reach status
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "InferenceModel" and owner["controller"] and owner["uid"] == "uid-1"


def test_pre_stop_drain_matches_triton_exit_timeout() -> None:
    spec = make_model().set("runtime", {"exitTimeoutSeconds": 45, "drainSeconds": 7}).obj()["spec"]
    dep = build_deployment(ctx_for(spec), "main")
    c = _container(dep)
    assert "--exit-timeout-secs=45" in c["args"]
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 7}}
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == termination_grace_seconds(7, 45) and grace > 7 + 45


def test_configmap_holds_a_loadable_repository_with_the_engine_options() -> None:
    spec = make_model().engine(precision="bf16", maxBatchSize=16,
                               sparseAttention={"enabled": True, "topK": 128}).obj()["spec"]
    cm = build_repository_configmap(ctx_for(spec), "main")
    assert set(cm["data"]) == {"config.pbtxt", "1__model.py"}
    assert "deepserve.engine" in cm["data"]["1__model.py"]
    pbtxt = cm["data"]["config.pbtxt"]
    raw = pbtxt.split('string_value: "', 1)[1].rsplit('"', 1)[0].encode().decode("unicode_escape")
    opts = read_options_from_config({"parameters": {"engine_options": {"string_value": raw}}})
    assert (opts.precision, opts.max_batch_size, opts.tensor_parallel) == ("bf16", 16, 2)
    assert opts.sparse_attention.enabled and opts.sparse_attention.top_k == 128
    assert opts.model_dir == "builtin://tiny-llama" and opts.served_model == "llama"


def test_pvc_source_is_mounted_read_only_and_becomes_the_model_dir() -> None:
    ctx = ctx_for(make_model().source("pvc://weights/llama/8b").obj()["spec"])
    dep = build_deployment(ctx, "main")
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-store")
    assert vol["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    assert "/mnt/models/llama/8b" in build_repository_configmap(ctx, "main")["data"]["config.pbtxt"]


def test_engine_change_rolls_the_pods_but_scaling_does_not() -> None:
    a = build_deployment(ctx_for(make_model().obj()["spec"]), "main")
    b = build_deployment(ctx_for(make_model().engine(maxNewTokens=64).obj()["spec"]), "main")
    c = build_deployment(ctx_for(make_model().obj()["spec"], replicas={"main": 5}), "main")
    assert a["spec"]["template"] != b["spec"]["template"]
    assert a["spec"]["template"] == c["spec"]["template"]


def test_cpu_placement_asks_for_no_gpu_and_no_gpu_toleration() -> None:
    cpu = ChosenPlacement("cpu", "cpu-generic", 0, 1, "fp32", {"pool": "cpu"})
    dep = build_deployment(ctx_for(make_model().obj()["spec"], cpu), "main")
    assert "nvidia.com/gpu" not in _container(dep)["resources"]["requests"]
    assert dep["spec"]["template"]["spec"]["tolerations"] == []


def test_httproute_splits_by_weight_and_pins_by_header() -> None:
    spec = make_model().versions(("stable", 80), ("canary", 20)).obj()["spec"]
    route = build_httproute(ctx_for(spec, gateway_parent=("gw", "public")))
    default = route["spec"]["rules"][-1]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in default] == [("llama-stable", 80), ("llama-canary", 20)]
    assert route["spec"]["rules"][1]["matches"][0]["headers"][0]["value"] == "canary"
    assert route["spec"]["parentRefs"][0]["name"] == "public"


def test_children_are_one_set_per_version_plus_model_service() -> None:
    spec = make_model().versions(("a", 50), ("b", 50)).obj()["spec"]
    kinds = [(o["kind"], o["metadata"]["name"]) for o in build_children(ctx_for(spec, gateway_api=True))]
    assert ("Service", "llama") in kinds and ("HTTPRoute", "llama") in kinds
    for v in ("a", "b"):
        assert {("ConfigMap", f"llama-{v}-repo"), ("Deployment", f"llama-{v}"), ("Service", f"llama-{v}"),
                ("PodDisruptionBudget", f"llama-{v}")} <= set(kinds)
    assert len(kinds) == len(set(kinds)) == 10
    assert build_pdb(ctx_for(spec), "a")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
