"""Pods request the accelerator resource their pool's device plugin advertises (#17.2).

Before, every Deployment asked for ``nvidia.com/gpu``: a model placed on an AMD pool or on a
MIG-slice pool (GPU Operator "mixed" strategy) could never be scheduled there.
"""

from __future__ import annotations

from typing import Any

import pytest
from model_cases import make_model

from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import BuildContext, ModelRef, Settings, build_deployment
from deepserve.operator.controller.planning import plan
from deepserve.operator.placement import PoolOffer, discover_pools

pytestmark = pytest.mark.unit


def _node(name: str, labels: dict[str, str], allocatable: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": allocatable,
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def _deployment_gpus(pools: list[Any]) -> tuple[dict[str, str], list[str]]:
    spec = InferenceModelSpec.from_dict(make_model().obj()["spec"])
    outcome = plan(spec, pools, None, True)
    assert outcome.chosen is not None, outcome.reason
    ctx = BuildContext(ModelRef("m", "default", "uid-1"), spec, outcome.chosen, Settings(),
                       {v.name: 1 for v in spec.versions})
    pod = build_deployment(ctx, spec.versions[0].name)["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    limits = triton["resources"]["limits"]
    gpus = {k: v for k, v in limits.items() if k not in ("cpu", "memory")}
    assert triton["resources"]["requests"].items() >= gpus.items()
    return gpus, [t["key"] for t in pod.get("tolerations", []) if t.get("operator") == "Exists"]


def test_amd_nodes_get_amd_gpu_requests() -> None:
    node = _node("mi1", {"amd.com/gpu.product-name": "AMD_Instinct_MI300X", "deepserve.io/pool": "mi300x"},
                 {"amd.com/gpu": "8", "cpu": "64", "memory": "1Ti"})
    pools = discover_pools([node], [], []).pools
    gpus, exists_keys = _deployment_gpus(pools)
    assert gpus == {"amd.com/gpu": "1"}
    assert "amd.com/gpu" in exists_keys and "nvidia.com/gpu" not in exists_keys


def test_mig_slice_pool_requests_the_slice_resource() -> None:
    node = _node("m1", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "deepserve.io/pool": "slices"},
                 {"nvidia.com/mig-3g.40gb": "2"})
    pools = discover_pools([node], [], []).pools
    gpus, _ = _deployment_gpus(pools)
    assert gpus == {"nvidia.com/mig-3g.40gb": "1"}


def test_declared_pool_without_nodes_uses_the_catalog_vendor() -> None:
    amd = PoolOffer("mi", "amd-instinct-mi300x", 8, 0, 0, 3.0, max_nodes=2, source="GPUNodePool")
    gpus, _ = _deployment_gpus([amd])
    assert gpus == {"amd.com/gpu": "1"}
    nvidia = PoolOffer("h100", "nvidia-h100-sxm5-80gb", 8, 0, 0, 3.0, max_nodes=2, source="GPUNodePool")
    assert _deployment_gpus([nvidia])[0] == {"nvidia.com/gpu": "1"}


def test_kept_placement_keeps_the_pools_resource() -> None:
    node = _node("mi1", {"amd.com/gpu.product-name": "AMD_Instinct_MI300X", "deepserve.io/pool": "mi300x"},
                 {"amd.com/gpu": "8"})
    pools = discover_pools([node], [], []).pools
    spec = InferenceModelSpec.from_dict(make_model().obj()["spec"])
    first = plan(spec, pools, None, True).chosen
    assert first is not None
    previous = {"pool": first.pool, "acceleratorId": first.accelerator_id, "gpusPerReplica": 1,
                "tensorParallel": 1, "precision": first.precision}
    kept = plan(spec, pools, previous, False)
    assert not kept.changed and kept.chosen is not None
    assert kept.chosen.gpu_resource == "amd.com/gpu"

