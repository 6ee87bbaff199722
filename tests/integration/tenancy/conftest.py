"""Integration fixtures of tenancy: deepserve's CRDs applied and established on the session cluster."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    k = Kube(cluster.api_client())
    paths = sorted((ROOT / "crds").glob("*.yaml"))
    for path in paths:
        k.apply(yaml.safe_load(path.read_text()), field_manager="deepserve-tests")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crds = [k.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", p.stem) for p in paths]
        if all(any(c["type"] == "Established" and c["status"] == "True"
                   for c in ((crd or {}).get("status") or {}).get("conditions") or []) for crd in crds):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("CRDs not established in 60 s")
    yield k
