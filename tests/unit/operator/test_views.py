"""Typed views: defaults from the schema, and every mistake refused naming its field."""

from __future__ import annotations

import pytest
from model_cases import INVALID_CASES, InvalidCase, make_model

from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.views import DEFAULT_VERSION, InferenceModelSpec

pytestmark = pytest.mark.unit


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = InferenceModelSpec.from_dict(make_model().obj()["spec"])
    assert spec.source.scheme == "builtin" and spec.source.format == "auto"
    assert spec.engine.precision == "auto" and spec.engine.error_bound == pytest.approx(0.007)
    assert spec.engine.sparse_attention.enabled is False
    assert spec.placement.strategy == "cost"
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas, spec.scaling.desired()) == (1, 1, 1)
    assert [(v.name, v.weight) for v in spec.versions] == [(DEFAULT_VERSION, 100)]
    assert spec.runtime.exit_timeout_s == 30


def test_versions_inherit_and_override() -> None:
    b = make_model().engine(precision="bf16").versions(
        ("stable", 90), ("canary", 10), canary={"precision": "fp8", "source": {"uri": "hf://org/new"}})
    spec = InferenceModelSpec.from_dict(b.obj()["spec"])
    stable, canary = spec.versions
    assert stable.engine.precision == "bf16" and stable.source.uri == "builtin://tiny-llama"
    assert canary.engine.precision == "fp8" and canary.source.scheme == "hf"


@pytest.mark.parametrize(("replicas", "lo", "hi", "want"), [(None, 2, 5, 2), (9, 1, 4, 4), (0, 1, 3, 1), (3, 0, 4, 3)])
def test_desired_replicas_are_clamped(replicas: int | None, lo: int, hi: int, want: int) -> None:
    scaling = {"minReplicas": lo, "maxReplicas": hi}
    if replicas is not None:
        scaling["replicas"] = replicas
    spec = InferenceModelSpec.from_dict(make_model().set("scaling", scaling).obj()["spec"])
    assert spec.scaling.desired() == want


def test_at_least_twenty_kinds_of_mistakes_are_catalogued() -> None:
    assert len({c.id for c in INVALID_CASES}) >= 20


@pytest.mark.parametrize("case", [c for c in INVALID_CASES if not c.api_only], ids=lambda c: c.id)
def test_invalid_spec_names_the_field(case: InvalidCase) -> None:
    with pytest.raises(SpecError) as err:
        InferenceModelSpec.from_dict(case.model["spec"])
    assert err.value.field == case.field, str(err.value)


def _pool(**spec: object) -> dict[str, object]:
    base = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}, "acceleratorId": "nvidia-l4", "gpusPerNode": 1}
    return {"metadata": {"name": "l4"}, "spec": {**base, **spec}}


def test_gpu_node_pool_view_is_typed_and_defaulted() -> None:
    from deepserve.operator.api.views import GPUNodePoolView

    view = GPUNodePoolView.from_object(_pool(tolerations=[{"key": "dedicated", "value": "ml"}]))
    assert view.name == "l4" and view.node_selector == (("nvidia.com/gpu.product", "NVIDIA-L4"),)
    assert (view.max_nodes, view.price_per_gpu_hour, view.currency) == (0, 0.0, "USD")
    assert view.tolerations == ({"key": "dedicated", "value": "ml", "operator": "Equal"},)


@pytest.mark.parametrize(("spec", "field"), [
    ({"nodeSelector": {"not a key": "x"}}, "spec.nodeSelector"),
    ({"tolerations": [{"operator": "Equal", "value": "x"}]}, "spec.tolerations[0].key"),
    ({"pricePerGpuHour": 1e308}, "spec.pricePerGpuHour"),
])
def test_gpu_node_pool_view_refuses_what_admission_refuses(spec: dict[str, object], field: str) -> None:
    from deepserve.operator.api.views import GPUNodePoolView, pool_views

    with pytest.raises(SpecError) as err:
        GPUNodePoolView.from_object(_pool(**spec))
    assert err.value.field == field
    assert [p.name for p in pool_views([_pool(**spec), _pool()])] == ["l4"]
