"""The CRDs: generated from one source, structural, documented, and in sync with crds/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deepserve.operator.api.crds import (
    all_crds,
    gpu_node_pool_crd,
    inference_model_crd,
    render_crds,
    sync_crds,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]


def _walk(schema: dict[str, Any], path: str):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


@pytest.mark.parametrize("crd", [inference_model_crd(), gpu_node_pool_crd()], ids=["im", "gnp"])
def test_every_field_has_a_description_and_a_type(crd: dict[str, Any]) -> None:
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = []
    for path, node in _walk(root["properties"]["spec"], "spec"):
        if "description" not in node:
            missing.append(path)
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
    for path, node in _walk(root["properties"]["status"], "status"):
        if "description" not in node:
            missing.append(path)
    assert missing == []


def test_every_cel_rule_message_names_a_field() -> None:
    for crd in all_crds():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        rules = [r for _, n in _walk(root, "") for r in n.get("x-kubernetes-validations", [])]
        for r in rules:
            assert "." in r["message"].split(" ")[0] or r["message"].split(" ")[0].isidentifier(), r


def test_inference_model_has_scale_status_columns_and_names() -> None:
    v = inference_model_crd()["spec"]["versions"][0]
    assert v["subresources"]["scale"] == {"specReplicasPath": ".spec.scaling.replicas",
                                          "statusReplicasPath": ".status.replicas",
                                          "labelSelectorPath": ".status.selector"}
    assert "status" in v["subresources"]
    cols = [c["name"] for c in v["additionalPrinterColumns"]]
    for wanted in ("Ready", "Pool", "Accelerator", "Replicas", "Endpoint", "Age"):
        assert wanted in cols
    names = inference_model_crd()["spec"]["names"]
    assert "im" in names["shortNames"] and names["categories"] == ["deepserve"]
    assert gpu_node_pool_crd()["spec"]["scope"] == "Cluster"


def test_checked_in_crds_match_the_schema() -> None:
    assert sync_crds(ROOT / "crds", check=True) == []
    chart = ROOT / "charts" / "deepserve" / "crds"
    if chart.parent.is_dir():
        assert sync_crds(chart, check=True) == []


def test_check_mode_reports_drift_and_writes_nothing(tmp_path: Path) -> None:
    assert len(sync_crds(tmp_path, check=True)) == len(render_crds())
    assert list(tmp_path.iterdir()) == []
    sync_crds(tmp_path, check=False)
    (tmp_path / "inferencemodels.deepserve.io.yaml").write_text("# hand edit\n")
    (tmp_path / "old.deepserve.io.yaml").write_text("stale")
    drift = sync_crds(tmp_path, check=True)
    assert sorted(Path(p).name for p in drift) == ["inferencemodels.deepserve.io.yaml", "old.deepserve.io.yaml"]


def test_rendered_yaml_round_trips() -> None:
    for name, text in render_crds().items():
        doc = yaml.safe_load(text)
        assert f"{doc['metadata']['name']}.yaml" == name
