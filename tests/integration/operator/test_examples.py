"""The API server accepts every numbered example (server-side dry run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deepserve.operator.kube import Kube

pytestmark = pytest.mark.integration
EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("[0-9][0-9]-*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted(path: Path, cluster: Any, kube: Kube, namespace: str) -> None:
    out = cluster.run_kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert out.returncode == 0, out.stderr
