"""Integration fixtures of the gateway: CRDs on the session cluster, shared fakes importable."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dstest.crds import kube_with_crds

from deepserve.operator.kube import Kube

ROOT = Path(__file__).resolve().parents[3]
for _name, _path in [
    ("gateway_fakes", ROOT / "tests" / "unit" / "gateway" / "gateway_fakes.py"),
    ("model_cases", ROOT / "tests" / "unit" / "operator" / "model_cases.py"),
]:
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, _path)
        assert _spec is not None and _spec.loader is not None
        sys.modules[_name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules[_name])


@pytest.fixture(scope="session")
def gw_kube(cluster: Any) -> Iterator[Kube]:
    """The Kube seam with deepserve's CRDs applied and established."""
    yield kube_with_crds(cluster)
