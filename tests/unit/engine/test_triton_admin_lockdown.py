"""The engine pod's launch command restricts Triton's admin APIs with a key no manifest holds.

The real-Triton half (403 without the key, 200 with it) is in
tests/integration/engine/test_triton_serving.py::test_admin_apis_need_the_admin_key.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from deepserve.engine.triton.local import (
    ADMIN_KEY_HEADER,
    HTTP_INFERENCE_API,
    RESTRICTED_APIS,
    TRITON_STACK_BYTES,
    LocalTriton,
)
from deepserve.operator.builders.deployment import TRITON_COMMAND, triton_args

pytestmark = pytest.mark.unit


def _launch(tmp_path: Path) -> list[str]:
    """Run the pod's command with a stand-in tritonserver on PATH that records its argv."""
    fake = tmp_path / "tritonserver"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\necho "stack=$(ulimit -s)"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    out = subprocess.run([*TRITON_COMMAND, *triton_args("tiny", 30)], env=env, check=True,
                         capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()


def test_pod_command_adds_restrictions_with_a_fresh_random_key(tmp_path: Path) -> None:
    first, second = _launch(tmp_path), _launch(tmp_path)
    assert first[: len(triton_args("tiny", 30))] == triton_args("tiny", 30)
    pattern = rf"{RESTRICTED_APIS}:{ADMIN_KEY_HEADER}=([0-9a-f]{{32}})"
    keys = []
    for argv in (first, second):
        http = [a for a in argv if a.startswith("--http-restricted-api=")]
        grpc = [a for a in argv if a.startswith("--grpc-restricted-protocol=")]
        assert len(http) == len(grpc) == 1
        match = re.fullmatch(pattern, http[0].split("=", 1)[1])
        assert match, http[0]
        assert grpc[0].split("=", 1)[1] == http[0].split("=", 1)[1]
        keys.append(match.group(1))
        assert argv[-1] == f"stack={TRITON_STACK_BYTES // 1024}"  # raised before exec
    assert keys[0] != keys[1]
    manifest_text = " ".join(TRITON_COMMAND + triton_args("tiny", 30))
    assert keys[0] not in manifest_text and ADMIN_KEY_HEADER + "=" + keys[0] not in manifest_text


def test_local_triton_restricts_admin_apis_with_its_own_key(tmp_path: Path) -> None:
    a, b = LocalTriton(tmp_path), LocalTriton(tmp_path)
    cmd = a.command(tmp_path, tmp_path / "tritonserver")
    setting = f"{RESTRICTED_APIS}:{ADMIN_KEY_HEADER}={a.admin_key}"
    assert f"--http-restricted-api={setting}" in cmd
    assert f"--grpc-restricted-protocol={setting}" in cmd
    assert a.admin_key != b.admin_key and len(a.admin_key) == 32


def test_local_triton_can_restrict_http_inference_as_in_a_pod(tmp_path: Path) -> None:
    server = LocalTriton(tmp_path, restrict_http_inference=True)
    cmd = server.command(tmp_path, tmp_path / "tritonserver")
    key = f"{ADMIN_KEY_HEADER}={server.admin_key}"
    assert f"--http-restricted-api={RESTRICTED_APIS},{HTTP_INFERENCE_API}:{key}" in cmd
    assert f"--grpc-restricted-protocol={RESTRICTED_APIS}:{key}" in cmd
