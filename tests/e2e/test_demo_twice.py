"""`make demo` twice on the same machine (#20 item 6): the second run must not trust the first's state.

The demo runs as a user runs it (a process, its own DEEPSERVE_HOME and ports), is stopped
with ``--down`` (etcd data kept, so the old ``Ready=True`` and old pods are still stored),
and runs again: it must wait for the current rollout and answer from the new pod.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LOCK = "/tmp/deepserve-e2e.lock"  # real Triton servers at pod IPs: one such test at a time


def _free_base() -> int:
    for base in range(31000, 40000, 17):
        try:
            for port in range(base, base + 6):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no six free consecutive ports")


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = dict(os.environ, DEEPSERVE_HOME=str(tmp_path / "home"),
                   DEEPSERVE_DEV_PORT_BASE=str(_free_base()), PYTHONUNBUFFERED="1")
        try:
            yield env
        finally:
            _demo(env, "--down")


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepserve.operator.dev.demo", *args], env=env,
                          capture_output=True, text=True, timeout=420)


def _check_run(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("generated tokens)") >= 3, out.stdout[-3000:]
    if "gateway step" in out.stdout and "is skipped" in out.stdout:
        return  # this build's engine pods serve no OpenAI frontend (said in the output)
    assert "matches the usage the gateway saw" in out.stdout, out.stdout[-3000:]


def test_demo_runs_twice_on_the_same_machine(demo_env: dict[str, str]) -> None:
    _check_run(_demo(demo_env))
    down = _demo(demo_env, "--down")
    assert down.returncode == 0, down.stderr
    second = _demo(demo_env)
    _check_run(second)
    assert "current rollout" in second.stdout
