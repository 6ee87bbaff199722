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

from deepserve.engine.usage import UsageEvent, encode_batch
from deepserve.operator.metering.credentials import mint_write_token

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
INGEST_KEY = b"test-ingest-key-0123456789abcdef"
READ_TOKEN = "s3cret-read-token"
#: The write credential of prod/chat, the model build_event's events belong to.
TOKEN = WRITE_TOKEN = mint_write_token(INGEST_KEY, "prod", "chat")
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

    def __init__(self, ledger: Path, token_file: Path, *extra: str) -> None:
        self.ledger, self.token_file = ledger, token_file
        self.key_file = token_file.with_name("ingest-key")
        self.key_file.write_bytes(INGEST_KEY)
        # The events of these tests are dated 2026-11: no age bound, so they stay valid.
        self.extra = extra or ("--max-event-age-days", "0")
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, port: int = 0) -> ServerProcess:
        self.proc = subprocess.Popen(
            [DEEPSERVE, "billing", "serve", "--ledger", str(self.ledger), "--host", "127.0.0.1",
             "--port", str(port), "--token-file", str(self.token_file),
             "--ingest-key-file", str(self.key_file), *self.extra],
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

    def ingest(self, events: list[UsageEvent], token: str = WRITE_TOKEN) -> tuple[int, Any]:
        """POST one batch; returns (status, decoded JSON answer)."""
        status, body = http(f"{self.url}/v1/usage/events", raw=encode_batch(events),
                            token=token)
        return status, json.loads(body)

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
    token_file.write_text(READ_TOKEN + "\n")
    srv = ServerProcess(tmp_path / "ledger.db", token_file).start()
    try:
        yield srv
    finally:
        srv.stop()


def http(url: str, *, body: Any = None, raw: bytes | None = None, token: str | None = "default"
         ) -> tuple[int, bytes]:
    """One request (POST when there is a body); returns (status, body) for any status.
    The default token is the write credential for a POST, the read one for a GET."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if token == "default":
        token = READ_TOKEN if data is None else WRITE_TOKEN
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
