"""Integration fixtures of tenancy: deepserve's CRDs applied and established on the session cluster."""

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

if "upstreams" not in sys.modules:  # tests import it by name (pytest runs in importlib mode)
    _spec = importlib.util.spec_from_file_location("upstreams", Path(__file__).with_name("upstreams.py"))
    assert _spec and _spec.loader
    sys.modules["upstreams"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["upstreams"])


@pytest.fixture(scope="session")
def tenancy_kube(cluster: Any) -> Iterator[Kube]:
    """The Kube seam with deepserve's CRDs (Tenant among them) applied and established."""
    yield kube_with_crds(cluster)
