"""A model no single node holds, through the real operator and API server (issue #18.3).

Without the LeaderWorkerSet API: Scheduled=False naming it, nothing created, no retry
loop. With the upstream CRD installed (the LWS controller itself is not built here): the
operator creates a LeaderWorkerSet of 2-node groups and reports TP x PP in status.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from model_cases import make_model
from ops_helpers import IM, condition, wait_for

from deepserve.operator.builders.leaderworkerset import LWS_API_VERSION, LWS_CRD
from deepserve.operator.kube import Kube

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CRD = Path(__file__).with_name("data") / "leaderworkersets-v0.9.0.yaml.gz"
LLAMA_405B_SHAPE = {"totalParams": 405_000_000_000, "layers": 126, "hiddenSize": 16384,
                    "heads": 128, "kvHeads": 8, "vocabSize": 128256}


def _crd_present(kube: Kube) -> bool:
    return kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", LWS_CRD) is not None


def test_multi_node_model_without_and_with_the_lws_api(kube: Kube, namespace: str,
                                                        start_operator: Any) -> None:
    if _crd_present(kube):  # another test installed it: start from a cluster without LWS
        kube.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", LWS_CRD)
        wait_for(lambda: not _crd_present(kube), "LWS CRD deleted", 60)
    op = start_operator()
    big = make_model("big", namespace).source("hf://org/big").set("source.shape", LLAMA_405B_SHAPE)
    big.set("engine.precision", "bf16")
    big.set("placement.allowedPools", ["a100-sxm"])
    kube.create(big.obj())

    def scheduled_false() -> dict[str, Any] | None:
        c = condition(kube.get(IM, "InferenceModel", "big", namespace), "Scheduled")
        return c if c.get("status") == "False" else None

    cond = wait_for(scheduled_false, "Scheduled=False", 60)
    assert cond["reason"] == "LeaderWorkerSetNotInstalled", cond
    assert "2 nodes per replica" in cond["message"] and LWS_CRD in cond["message"]
    assert kube.list("apps/v1", "Deployment", namespace) == []
    rv = kube.get(IM, "InferenceModel", "big", namespace)["metadata"]["resourceVersion"]
    time.sleep(4)  # no retry loop: the model is not rewritten while nothing changes
    assert kube.get(IM, "InferenceModel", "big", namespace)["metadata"]["resourceVersion"] == rv
    assert op.proc.poll() is None
    op.stop()

    kube.apply(yaml.safe_load(gzip.decompress(CRD.read_bytes())), field_manager="deepserve-tests")
    wait_for(lambda: _crd_present(kube) and kube.get("apiextensions.k8s.io/v1",
             "CustomResourceDefinition", LWS_CRD).get("status", {}).get("acceptedNames", {})
             .get("kind") == "LeaderWorkerSet", "LWS CRD established", 60)
    time.sleep(2)  # discovery catches up with the new API
    start_operator()  # the operator checks for the API when it starts
    lws = wait_for(lambda: kube.get(LWS_API_VERSION, "LeaderWorkerSet", "big-main", namespace),
                   "LeaderWorkerSet big-main", 90)
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    placement = kube.get(IM, "InferenceModel", "big", namespace)["status"]["placement"]
    assert "pipelineParallel" in placement, placement
    assert (placement["tensorParallel"], placement["pipelineParallel"],
            placement["nodesPerReplica"], placement["gpusPerReplica"]) == (8, 2, 2, 16)
    assert kube.list("apps/v1", "Deployment", namespace) == []
