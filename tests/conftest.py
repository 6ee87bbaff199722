"""Fixtures shared by every test suite.

- ``cluster`` (session): the real local control plane (etcd, kube-apiserver,
  controller-manager, scheduler, KWOK with simulated GPU pools), started once per session
  in a temporary directory on free ports; or, when ``DEEPSERVE_KUBECONFIG`` is set, that
  cluster (e.g. kind) is used as it is.
- ``namespace``: a fresh namespace per test, deleted afterwards.

On machines without an NVIDIA driver, Triton (the kernel compiler) is put in interpreter mode
here, before any test module imports it: it reads ``TRITON_INTERPRET`` once, at import, and
integration modules import the engine (and so the kernels) while ``pytest tests`` collects,
before ``tests/unit`` is reached. Kernels run only on CUDA unless a test opts in.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dstest.cluster import ClusterHandle, start_session_cluster

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    handle = start_session_cluster(Path(tmp_path_factory.mktemp("cluster")))
    try:
        yield handle
    finally:
        handle.close()
        if handle.local is not None:
            handle.local.stop()


@pytest.fixture
def namespace(cluster: ClusterHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client

    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:5]}"
    api = client.CoreV1Api(cluster.api_client())
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"deepserve.io/test": "true"})))
    try:
        yield name
    finally:
        api.delete_namespace(name, propagation_policy="Background")
