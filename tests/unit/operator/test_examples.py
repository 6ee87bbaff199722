"""The numbered examples are valid against the schema (the integration suite applies them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deepserve.operator.api import gpunodepool_schema
from deepserve.operator.api.schema_check import conform
from deepserve.operator.api.views import InferenceModelSpec

pytestmark = pytest.mark.unit
EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("[0-9][0-9]-*.yaml"))


def test_examples_exist_and_start_with_the_tiny_model() -> None:
    assert EXAMPLES and EXAMPLES[0].name == "01-tiny-model.yaml"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["apiVersion"] == "deepserve.io/v1alpha1"
        if doc["kind"] == "InferenceModel":
            InferenceModelSpec.from_dict(doc["spec"])
        else:
            conform(gpunodepool_schema.SPEC, doc["spec"], "spec")
