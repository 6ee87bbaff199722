"""deepserve's CRDs applied to a test cluster, waited on until the API server serves them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from deepserve.operator.kube import Kube

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def kube_with_crds(cluster: Any, timeout: float = 60.0) -> Kube:
    """The Kube seam on ``cluster`` once every CRD in crds/ is applied and Established."""
    k = Kube(cluster.api_client())
    paths = sorted(CRD_DIR.glob("*.yaml"))
    for path in paths:
        k.apply(yaml.safe_load(path.read_text()), field_manager="deepserve-tests")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crds = [k.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", p.stem) for p in paths]
        if all(any(c["type"] == "Established" and c["status"] == "True"
                   for c in ((crd or {}).get("status") or {}).get("conditions") or []) for crd in crds):
            return k
        time.sleep(0.2)
    raise AssertionError(f"CRDs not established in {timeout:.0f} s")
