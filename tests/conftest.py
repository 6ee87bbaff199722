"""Fixtures shared by every test suite.

- ``cluster`` (session): the real local control plane (etcd, kube-apiserver,
  controller-manager, scheduler, KWOK with simulated GPU pools), started once per session
  in a temporary directory on free ports; or, when ``DEEPSERVE_KUBECONFIG`` is set, that
  cluster (e.g. kind) is used as it is.
- ``namespace``: a fresh namespace per test, deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dstest.cluster import ClusterHandle, start_session_cluster


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
