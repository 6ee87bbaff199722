"""Integration fixtures of the gateway: CRDs on the session cluster, shared fakes importable."""

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
    k = Kube(cluster.api_client())
    paths = sorted((ROOT / "crds").glob("*.yaml"))
    for path in paths:
        k.apply(yaml.safe_load(path.read_text()), field_manager="deepserve-tests")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crds = [k.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", p.stem) for p in paths]
        if all(
            any(c["type"] == "Established" and c["status"] == "True"
                for c in ((crd or {}).get("status") or {}).get("conditions") or [])
            for crd in crds
        ):
            break
        time.sleep(0.5)
    yield k
