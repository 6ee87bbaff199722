"""Integration fixtures of the autoscaler: the CRDs installed on the session cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dstest.crds import kube_with_crds

from deepserve.operator.kube import Kube

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def scale_kube(cluster: Any) -> Iterator[Kube]:
    """The Kube seam with deepserve's CRDs applied and established."""
    yield kube_with_crds(cluster)
