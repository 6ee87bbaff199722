"""Process-level fixtures for metering: a billing server in its own process, and
helpers to build events. Nothing here needs the Kubernetes control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest

from deepserve.engine.usage import UsageEvent

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
TOKEN = "s3cret-token"
DEEPSERVE = str(Path(sys.executable).with_name("deepserve"))


def build_event(i: int, **overrides: Any) -> UsageEvent:
    fields: dict[str, Any] = dict(
        model="chat", version="v1", namespace="prod", account="acme", request_id=f"r-{i}",
        prompt_tokens=5 + i % 11, generated_tokens=i % 13, compute_ms=3.0, precision="bf16",
        started_at=T0 + timedelta(milliseconds=i), ended_at=T0 + timedelta(milliseconds=i + 40))
    fields.update(overrides)
    return UsageEvent.create(**fields)


class ServerProcess:
    """``deepserve billing serve`` on a free loopback port, in a child process."""

    def __init__(self, ledger: Path, token_file: Path) -> None:
        self.ledger, self.token_file = ledger, token_file
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, port: int = 0) -> ServerProcess:
        self.proc = subprocess.Popen(
            [DEEPSERVE, "billing", "serve", "--ledger", str(self.ledger), "--host", "127.0.0.1",
             "--port", str(port), "--token-file", str(self.token_file)],
            stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "billing endpoint on " in line:
                self.url = line.strip().rsplit(" ", 1)[-1]
                return self
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"billing server did not start (rc={self.proc.poll()})")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[-1])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    srv = ServerProcess(tmp_path / "ledger.db", token_file).start()
    try:
        yield srv
    finally:
        srv.stop()


def http(url: str, *, body: Any = None, token: str | None = TOKEN) -> tuple[int, bytes]:
    """One request; returns (status, body) for any status."""
    data = None if body is None else json.dumps(body).encode()
    req = Request(url, data=data, method="POST" if data is not None else "GET",
                  headers={"Content-Type": "application/json",
                           **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except Exception as err:  # HTTPError carries status and body
        code = getattr(err, "code", None)
        if code is None:
            raise
        return code, err.read()  # type: ignore[attr-defined]


@pytest.fixture
def make_event() -> Callable[..., UsageEvent]:
    return build_event
