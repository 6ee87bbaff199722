"""One writer per InferenceModel status field (issue #17.4), checked on the schema and the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fake_api import FakeApi
from model_cases import make_model

from deepserve.operator.api.inferencemodel_schema import STATUS
from deepserve.operator.builders import Settings
from deepserve.operator.controller.reconcile import reconcile
from deepserve.operator.controller.status import AUTOSCALER, RECONCILE, STATUS_OWNERS
from deepserve.operator.placement import PoolOffer

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
POOLS = [PoolOffer("l4", "nvidia-l4", 1, 3, 3, 0.7, "USD", 3, {"pool": "l4"})]


def test_every_status_field_has_exactly_one_owner() -> None:
    assert set(STATUS_OWNERS) == set(STATUS["properties"])


def test_only_the_owners_write_inferencemodel_status() -> None:
    """Every status write in the code (GPUNodePool's aside) is in an owner's module."""
    writers: set[str] = set()
    for path in (ROOT / "deepserve").rglob("*.py"):
        for line in path.read_text().splitlines():
            if re.search(r"(?<!def )\b(patch_status|replace_status)\(", line) and "GPUNodePool" not in line:
                writers.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert writers == {RECONCILE, AUTOSCALER}
    autoscaler_writes = re.findall(r'patch_status\([^)]*"InferenceModel"[^)]*\{([^}]*)\}',
                                   (ROOT / "deepserve/operator/autoscaler/io.py").read_text())
    assert autoscaler_writes == ['"scaling": scaling']  # the autoscaler writes status.scaling only


def test_the_reconcile_never_writes_the_autoscalers_field() -> None:
    api = FakeApi()
    model = make_model("m").obj()
    model["metadata"].update(uid="u", generation=1)
    scaling = {"owner": "deepserve", "desiredReplicas": 1}
    model["status"] = {"scaling": scaling}
    seen = api.observed(model, POOLS)
    _, status = reconcile(seen, api, Settings(), {}, "T")
    patches: list[dict[str, Any]] = api.status_patches
    assert patches and all("scaling" not in p for p in patches)
    assert status["scaling"] == scaling  # carried, so the next merge patch does not null it
    reconcile(api.observed({**model, "status": status}, POOLS, ready=True), api, Settings(), {}, "T",
                         {k: v for k, v in status.items() if k != "scaling"})
    assert all("scaling" not in p for p in api.status_patches)
