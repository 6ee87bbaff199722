"""The LeaderWorkerSet the builder makes is admitted by the real API server with the
upstream CRD installed alone (the LWS controller is not built here: sigs.k8s.io/lws is not
in the local Go module list), and the CRD's scale subresource counts groups.

The CRD is upstream's ``config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml``
at v0.9.0 (https://github.com/kubernetes-sigs/lws, Apache-2.0), descriptions stripped.
"""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import pytest
import yaml
from model_cases import make_model
from ops_helpers import wait_for

from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import BuildContext, ChosenPlacement, ModelRef, Settings
from deepserve.operator.builders.leaderworkerset import LWS_CRD, build_leaderworkerset
from deepserve.operator.kube import Kube, KubeError

pytestmark = [pytest.mark.integration]
CRD = Path(__file__).with_name("data") / "leaderworkersets-v0.9.0.yaml.gz"


@pytest.fixture(scope="module")
def lws_crd(kube: Kube) -> dict[str, Any]:
    kube.apply(yaml.safe_load(gzip.decompress(CRD.read_bytes())), field_manager="deepserve-tests")

    def established() -> dict[str, Any] | None:
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", LWS_CRD)
        conds = {c["type"]: c["status"] for c in ((crd or {}).get("status") or {}).get("conditions") or []}
        return crd if conds.get("Established") == "True" else None

    return wait_for(established, "LeaderWorkerSet CRD established", 60)


def test_builder_output_is_admitted_and_scales_by_group(kube: Kube, namespace: str,
                                                        lws_crd: dict[str, Any]) -> None:
    view = InferenceModelSpec.from_dict(make_model().obj()["spec"])
    placement = ChosenPlacement("h200", "nvidia-h200-sxm-141gb", 16, 8, "bf16",
                                pipeline_parallel=2, nodes_per_replica=2)
    ctx = BuildContext(ModelRef("big", namespace, "2f0a7a3e-0000-4000-8000-000000000001"), view,
                       placement, Settings(), {v.name: 2 for v in view.versions})
    lws = build_leaderworkerset(ctx, view.versions[0].name)
    admitted = kube.create(lws, dry_run=True)
    assert admitted["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert admitted["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert admitted["spec"]["replicas"] == 2
    scale = lws_crd["spec"]["versions"][0]["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"  # the autoscaler scales groups
    broken = copy.deepcopy(lws)
    broken["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"
    with pytest.raises(KubeError):  # the schema is real: a bad enum is refused
        kube.create(broken, dry_run=True)
