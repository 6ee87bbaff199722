"""One GPU accounting: every vendor and MIG slices count the same in discovery, pool status,
the autoscaler and GPU-time billing (issue #17 item 2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from deepserve.operator.autoscaler.capacity import replica_room
from deepserve.operator.controller.pools import pool_status
from deepserve.operator.controller.snapshot import gpu_pod_snapshot
from deepserve.operator.metering import PodSnapshot, gpu_intervals
from deepserve.operator.placement.gpus import (
    gpu_quantity,
    mig_slice_memory_gib,
    node_gpus,
    pod_gpus,
)
from deepserve.operator.placement.pools import discover_pools

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def pod(resource: str, count: int, node: str = "n1", ready_at: datetime | None = T0) -> dict[str, Any]:
    conds = [{"type": "Ready", "status": "True", "lastTransitionTime": ready_at.isoformat().replace("+00:00", "Z")}] \
        if ready_at else []
    return {"metadata": {"name": "p", "namespace": "prod", "uid": "u1",
                         "labels": {"deepserve.io/model": "chat"}},
            "spec": {"nodeName": node, "containers": [
                {"resources": {"limits": {resource: str(count)}, "requests": {resource: str(count)}}}]},
            "status": {"phase": "Running", "conditions": conds}}


def node(name: str, resource: str, count: int, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {resource: str(count), "cpu": "64"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "amd.com/gpu", "habana.ai/gaudi",
                                      "aws.amazon.com/neuron", "google.com/tpu", "gpu.intel.com/i915",
                                      "nvidia.com/mig-1g.5gb"])
def test_every_vendor_counts(resource: str) -> None:
    assert pod_gpus(pod(resource, 2)) == 2
    assert node_gpus(node("n", resource, 8, {})) == 8


def test_cpu_and_unknown_resources_are_not_gpus() -> None:
    assert gpu_quantity({"cpu": "4", "memory": "1Gi", "example.com/fpga": "1"}) == ("", 0)
    assert pod_gpus({"spec": {"containers": [{"resources": {}}]}}) == 0


def test_amd_pool_bills_gpu_time() -> None:
    # Before one accounting, PodSnapshot read only nvidia.com/gpu and an AMD pool billed 0.
    first = PodSnapshot.from_pod(pod("amd.com/gpu", 4), T0 + timedelta(minutes=1), pool="mi300x")
    later = PodSnapshot.from_pod(pod("amd.com/gpu", 4), T0 + timedelta(minutes=31), pool="mi300x")
    assert first is not None and later is not None and first.gpus == 4
    billed = sum(i.gpu_seconds for i in gpu_intervals([first, later]))
    assert billed == 4 * 31 * 60


def test_amd_pool_status_counts_used_gpus() -> None:
    sel = {"deepserve.io/pool": "mi300x"}
    pool = {"metadata": {"name": "mi300x", "generation": 1},
            "spec": {"acceleratorId": "amd-instinct-mi300x", "nodeSelector": sel, "gpusPerNode": 8}}
    nodes = [node("n1", "amd.com/gpu", 8, sel), node("n2", "amd.com/gpu", 8, sel)]
    slim = gpu_pod_snapshot(pod("amd.com/gpu", 3, node="n1"))
    assert slim is not None  # the controller's pod index keeps AMD pods
    status = pool_status(pool, nodes, [slim], [], "2026-11-01T10:00:00Z")
    assert (status["totalGpus"], status["freeGpus"]) == (16, 13)


def test_mixed_cluster_discovery_counts_each_vendor() -> None:
    nodes = [node("a1", "amd.com/gpu", 8, {"deepserve.io/pool": "amd", "amd.com/gpu.product-name": "AMD_Instinct_MI300X"}),
             node("h1", "nvidia.com/gpu", 8, {"deepserve.io/pool": "h100",
                                               "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})]
    pods = [pod("amd.com/gpu", 2, node="a1"), pod("nvidia.com/gpu", 5, node="h1")]
    found = discover_pools(nodes, pods, [])
    free = {p.name: p.free_gpus for p in found.pools}
    assert free == {"h100": 3, "amd": 6}
    offer = next(p for p in found.pools if p.name == "amd")
    assert replica_room(offer, 2) == 3


def test_mig_slice_is_its_own_small_accelerator() -> None:
    assert mig_slice_memory_gib("nvidia.com/mig-1g.5gb") == 5
    assert mig_slice_memory_gib("NVIDIA-A100-SXM4-40GB-MIG-3g.20gb") == 20
    assert mig_slice_memory_gib("NVIDIA-A100-SXM4-40GB") is None
    assert pod_gpus(pod("nvidia.com/mig-1g.5gb", 7)) == 7


def test_plan_refuses_non_object_config_and_negative_price(tmp_path: Any, capsys: Any) -> None:
    import json

    from deepserve.operator.placement.pools import pools_from_document
    with pytest.raises(ValueError, match=r"pools\[0\].pricePerGpuHour"):
        pools_from_document({"pools": [{"name": "a", "acceleratorId": "x", "gpusPerNode": 8,
                                        "pricePerGpuHour": -1}]})
    from deepserve.operator.cli import main
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps([1, 2]))
    pools = tmp_path / "pools.json"
    pools.write_text(json.dumps({"pools": []}))
    assert main(["plan", "model", "--hf-config", str(cfg), "--pools-file", str(pools)]) == 2
    err = capsys.readouterr().err.strip()
    assert "JSON object" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("override", "field"), [({"num_attention_heads": 0}, "num_attention_heads"),
                                                 ({"num_key_value_heads": 0}, "num_key_value_heads")])
def test_zero_heads_are_refused(override: dict[str, int], field: str) -> None:
    from deepserve.operator.placement.shape import ModelShape, ShapeError
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
           "intermediate_size": 128, "max_position_embeddings": 512} | override
    with pytest.raises(ShapeError, match=field):
        ModelShape.from_hf_config(cfg)
