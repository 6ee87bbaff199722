"""Commands that read the cluster go through the one Kube seam (issue #17.5) and still work."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_plan_pools_reads_nodes_pods_and_pools_through_kube(cluster: Any, kube: Any) -> None:
    out = subprocess.run([sys.executable, "-m", "deepserve.operator.cli", "plan", "pools", "--kubeconfig",
                          cluster.kubeconfig], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:] if line.strip()}
    assert {"l4", "h100-sxm", "a100-sxm"} <= set(rows)  # the simulated pools of the local cluster
    assert rows["l4"][1] == "nvidia-l4" and rows["l4"][2] == "1"
