"""Helpers of the operator integration tests: polling, conditions, the operator process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepserve.operator.kube import KubeError

ROOT = Path(__file__).resolve().parents[3]
IM = "deepserve.io/v1alpha1"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except KubeError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class OperatorProcess:
    """`deepserve operator run` as a child process, logging to a file."""

    def __init__(self, kubeconfig: str, namespace: str, log_path: Path, extra: list[str]) -> None:
        self.log_path = log_path
        cmd = [sys.executable, "-m", "deepserve.operator.cli", "operator", "run", "--kubeconfig", kubeconfig,
               "-n", namespace, "--resync-seconds", "10", *extra]
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a crashed or evicted pod."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait (kopf shuts down gracefully)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """A status condition of ``obj`` by type ({} when absent)."""
    for c in ((obj or {}).get("status") or {}).get("conditions", []) or []:
        if c.get("type") == kind:
            return c
    return {}
