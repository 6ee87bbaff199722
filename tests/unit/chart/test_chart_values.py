"""values.schema.json and the chart's own checks refuse bad values with a message naming them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

CHART = Path(__file__).resolve().parents[3] / "charts" / "deepserve"


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": -1}, "at '/replicaCount': minimum: got -1, want 1"),
    ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    ({"operator": {"watchNamespaces": ["team-*"]}}, "at '/operator/watchNamespaces/0'"),
    ({"persistence": {"size": "lots"}}, "at '/persistence/size'"),
    ({"billing": {"port": 80}}, "at '/billing/port': minimum: got 80, want 1"),
    ({"runAsUser": 0}, "at '/runAsUser': minimum: got 0, want 1"),
    ({"image": {"digest": "latest"}}, "at '/image/digest'"),
    ({"serviceMonitor": {"enabled": "yes"}}, "at '/serviceMonitor/enabled': got string, want boolean"),
    ({"operator": {"resyncSeconds": 1}}, "at '/operator/resyncSeconds'"),
])
def test_schema_rejects_bad_values_naming_the_field(render, values, message) -> None:
    out = render(values)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"operator": {"peering": {"enabled": False}}},
     "replicaCount > 1 needs operator.peering.enabled=true"),
    ({"operator": {"watchNamespaces": ["a"]}},
     "operator.watchNamespaces with operator.peering.enabled needs kopf's namespaced KopfPeering CRD"),
    ({"replicaCount": 2, "persistence": {"accessModes": ["ReadWriteOncePod"]}},
     "ReadWriteOncePod allows one pod only"),
    ({"operator": {"gatewayApi": {"parentName": "gw"}}},
     "operator.gatewayApi.parentNamespace is required"),
    ({"serviceAccount": {"create": False}},
     "serviceAccount.name is required when serviceAccount.create is false"),
])
def test_combinations_the_schema_cannot_express_fail_clearly(render, values, message) -> None:
    out = render(values)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_values_yaml_is_valid_and_every_key_is_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = (CHART / "values.yaml").read_text().splitlines()

    def walk(node: dict, props: dict, path: str) -> None:
        for key, value in node.items():
            assert key in props, f"{path}{key} is missing from values.schema.json"
            sub = props[key]
            if isinstance(value, dict) and value and "properties" in sub:
                walk(value, sub["properties"], f"{path}{key}.")
    walk(values, schema["properties"], "")

    # helm-docs style: every leaf value has a comment right above it or in a map above it.
    keys = [(i, len(ln) - len(ln.lstrip())) for i, ln in enumerate(text)
            if ln.strip() and not ln.lstrip().startswith(("#", "-")) and ":" in ln]
    documented: dict[int, bool] = {}  # indentation -> whether the open key at that depth has a comment
    for n, (i, indent) in enumerate(keys):
        own = i > 0 and text[i - 1].lstrip().startswith("#")
        documented = {d: v for d, v in documented.items() if d < indent}
        documented[indent] = own
        is_leaf = n + 1 == len(keys) or keys[n + 1][1] <= indent
        if is_leaf:
            assert any(documented.values()), f"values.yaml line {i + 1} has no comment: {text[i].strip()}"


def test_chart_crds_are_the_generated_ones() -> None:
    top = CHART.parents[1] / "crds"
    chart = CHART / "crds"
    names = sorted(p.name for p in top.glob("*.yaml"))
    assert names, "crds/ is empty: run `deepserve operator gen-crds`"
    assert sorted(p.name for p in chart.glob("*.yaml")) == names
    for name in names:
        assert (chart / name).read_bytes() == (top / name).read_bytes(), name
