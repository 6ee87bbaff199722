"""The billing server follows the ingest key through a rotation: new tokens verify at once,
the previous key's tokens for a grace period only, so no usage is refused mid-rotation."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.operator.metering.credentials import (
    CredentialError,
    IngestKeyFile,
    WriteScope,
    file_write_auth,
    mint_write_token,
)

pytestmark = pytest.mark.unit
OLD = b"old-ingest-key-0123456789abcdef0"
NEW = b"new-ingest-key-0123456789abcdef0"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rotation_accepts_new_tokens_and_old_ones_only_within_the_grace(tmp_path: Path) -> None:
    path = tmp_path / "ingest-key"
    path.write_bytes(OLD)
    clock = Clock()
    verify = file_write_auth(IngestKeyFile(path, refresh_s=5.0, clock=clock), grace_s=900.0)
    old_token, new_token = mint_write_token(OLD, "ns", "a"), mint_write_token(NEW, "ns", "a")
    assert verify(old_token) == WriteScope("ns", "a") and verify(new_token) is None

    path.write_bytes(NEW)
    clock.t += 4.0
    assert verify(new_token) is None  # not re-read yet (at most every refresh_s)
    clock.t += 2.0
    assert verify(new_token) == WriteScope("ns", "a")
    assert verify(old_token) == WriteScope("ns", "a")  # pods not yet re-minted keep writing
    clock.t += 901.0
    assert verify(new_token) == WriteScope("ns", "a")
    assert verify(old_token) is None  # the grace is over
    assert verify(mint_write_token(NEW, "*", "*")) is None  # wildcards stay off


def test_the_first_read_must_work_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="--ingest-key-file: cannot read"):
        IngestKeyFile(tmp_path / "missing", field="--ingest-key-file")
    (tmp_path / "short").write_bytes(b"0123")
    with pytest.raises(CredentialError, match="at least 16 bytes"):
        IngestKeyFile(tmp_path / "short")
