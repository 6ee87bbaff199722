"""`deepserve dev up|status|down` as a user runs them: a second, independent cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _free_base() -> int:
    for base in range(21000, 40000, 97):
        ok = True
        for p in range(base, base + 6):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def _ds(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepserve.operator.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_dev_up_status_down(tmp_path: Path) -> None:
    env = dict(os.environ, DEEPSERVE_DEV_PORT_BASE=str(_free_base()))
    state = str(tmp_path / "state")
    up = _ds("dev", "up", "--state-dir", state, env=env)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert "cluster up in" in up.stdout and "export KUBECONFIG=" in up.stdout
        st = _ds("dev", "status", "--state-dir", state, "-o", "json", env=env)
        assert st.returncode == 0, st.stdout + st.stderr
        info = json.loads(st.stdout)
        assert info["healthy"] is True
        assert set(info["components"].values()) == {"running"}
        assert info["readyNodes"] == info["nodes"] >= 4 and info["gpus"] > 0
        again = _ds("dev", "up", "--state-dir", state, env=env)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        down = _ds("dev", "down", "--state-dir", state, env=env)
    assert down.returncode == 0, down.stderr
    assert "kube-apiserver" in down.stdout
    pids = json.loads((tmp_path / "state" / "state.json").read_text())["pids"]
    assert pids == {}
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert state not in ps, "a component kept running after dev down"
    st = _ds("dev", "status", "--state-dir", state, env=env)
    assert st.returncode == 1 and "healthy      False" in st.stdout
