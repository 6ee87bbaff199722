"""Simulated pools and the toolchain resolve as users expect, and fail clearly."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from deepserve.operator.dev import toolchain
from deepserve.operator.dev.cluster import DEFAULT_POOLS_FILE, ClusterError, LocalCluster, Ports
from deepserve.operator.dev.nodes import PoolsFileError, build_nodes, load_pools_file, parse_pools

pytestmark = pytest.mark.unit


def test_builtin_pools_have_four_kinds_with_real_gfd_labels() -> None:
    pools = load_pools_file(DEFAULT_POOLS_FILE)
    assert len(pools) >= 4
    nodes = build_nodes(pools)
    products = {n["metadata"]["labels"].get("nvidia.com/gpu.product") for n in nodes}
    assert {"NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4", None} <= products
    cidrs = [ipaddress.ip_network(n["spec"]["podCIDR"]) for n in nodes]
    assert len(set(cidrs)) == len(cidrs), "each node needs its own podCIDR"
    assert all(c.subnet_of(ipaddress.ip_network("127.0.0.0/8")) for c in cidrs)
    for n in nodes:
        labels = n["metadata"]["labels"]
        gpu = n["status"]["capacity"].get("nvidia.com/gpu")
        if gpu:
            assert labels["nvidia.com/gpu.count"] == gpu
            assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in n["spec"]["taints"]
        else:
            assert n["spec"]["taints"] == []
        assert any(k in labels for k in ("cloud.google.com/gke-nodepool", "karpenter.sh/nodepool"))


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "pools"),
        ({"pools": [{"nodes": 1, "poolLabel": {"a": "b"}}]}, "pools[0].name"),
        ({"pools": [{"name": "x", "nodes": 0, "poolLabel": {"a": "b"}}]}, "pools[0].nodes"),
        ({"pools": [{"name": "x", "nodes": 1, "poolLabel": {}}]}, "pools[0].poolLabel"),
        ({"pools": [{"name": "x", "nodes": 1, "poolLabel": {"a": "b"}, "gpu": {"product": "p", "memoryMiB": 1, "count": 0}}]}, "pools[0].gpu.count"),
        ({"pools": [{"name": "x", "nodes": 1, "poolLabel": {"a": "b"}}, {"name": "x", "nodes": 1, "poolLabel": {"a": "c"}}]}, "pools[1].name"),
    ],
)
def test_invalid_pools_file_names_the_field(doc: dict, field: str) -> None:
    with pytest.raises(PoolsFileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_pools(doc)


def test_kubebuilder_assets_take_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kube-apiserver").write_text("#!/bin/sh\n")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    monkeypatch.setenv("DEEPSERVE_TOOLS_DIR", str(tmp_path / "cache"))
    tc = toolchain.resolve()
    assert tc.path("kube-apiserver") == str(tmp_path / "kube-apiserver")
    with pytest.raises(toolchain.ToolchainError, match=r"'etcd' not found.*make tools"):
        tc.path("etcd")
    assert "etcd" in toolchain.missing(tc) and "kube-apiserver" not in toolchain.missing(tc)


def test_cache_dir_is_versioned_outside_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSERVE_TOOLS_DIR", raising=False)
    d = toolchain.default_bin_dir()
    assert toolchain.KUBERNETES_VERSION in str(d)
    assert not str(d).startswith(str(Path(__file__).parents[3]))


def test_missing_binaries_give_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSERVE_TOOLS_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    c = LocalCluster(state_dir=tmp_path / "state", ports=Ports.free())
    with pytest.raises(toolchain.ToolchainError, match=r"not found.*make tools"):
        c.start(timeout=5)
    assert c.running_pids() == {}


def test_port_clash_names_the_component(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in toolchain.ALL_BINARIES:
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(bin_dir))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        ports = Ports(**{**Ports.free().__dict__, "apiserver": busy})
        c = LocalCluster(state_dir=tmp_path / "state", ports=ports)
        with pytest.raises(ClusterError, match=f"port {busy} \\(apiserver\\)"):
            c.start(timeout=5)


def test_failed_start_leaves_nothing_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in toolchain.ALL_BINARIES:
        f = bin_dir / name
        f.write_text("#!/bin/sh\nexec sleep 300\n")  # starts, never becomes healthy
        f.chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(bin_dir))
    c = LocalCluster(state_dir=tmp_path / "state", ports=Ports.free())
    with pytest.raises(ClusterError, match=r"timed out .* etcd health"):
        c.start(timeout=1)
    state = (tmp_path / "state" / "state.json").read_text()
    assert '"pids": {}' in state
    for line in os.popen("ps -eo args").read().splitlines():
        assert str(bin_dir) not in line, f"left running: {line}"
