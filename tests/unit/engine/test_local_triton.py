"""LocalTriton's command line and install discovery (no server started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.engine.triton.local import LocalTriton, find_triton

pytestmark = pytest.mark.unit


def test_every_endpoint_binds_to_the_given_host(tmp_path: Path) -> None:
    server = LocalTriton(tmp_path, host="127.0.0.7", http_port=18000, grpc_port=18001,
                         metrics_port=18002)
    cmd = server.command(tmp_path / "backends", Path("/bin/tritonserver"))
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=127.0.0.7" in cmd
    assert {"--http-port=18000", "--grpc-port=18001", "--metrics-port=18002"} <= set(cmd)
    assert server.grpc_url == "127.0.0.7:18001"
    assert server.metrics_url == "http://127.0.0.7:18002/metrics"


def test_free_ports_are_chosen_on_the_host(tmp_path: Path) -> None:
    server = LocalTriton(tmp_path, host="127.0.0.7")
    assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3


def test_finds_the_wheel_install() -> None:
    pytest.importorskip("pytriton")
    install = find_triton()
    assert install.server.name == "tritonserver" and install.stub.is_file()
