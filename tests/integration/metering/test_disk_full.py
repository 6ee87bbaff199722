"""The ledger's disk fills up while engines ship usage: ingest answers 503, the usage stays
in the engine's spool, and once space returns every event is billed exactly once.

ENOSPC is real: the ledger lives on a small tmpfs mounted for the test (needs the right to
mount; skipped where there is none), filled to the last byte by a file, then freed.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepserve.engine.usage import UsageShipper, UsageSpool

from .conftest import READ_TOKEN, WRITE_TOKEN, ServerProcess, build_event, http

pytestmark = [pytest.mark.integration]
CSV = "/v1/billing/export?format=csv&from=2000-01-01&to=2100-01-01"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the filesystem says ENOSPC, down to the last byte; return it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _billed(server: ServerProcess) -> Counter[str]:
    status, body = http(server.url + CSV, token=READ_TOKEN)
    assert status == 200
    return Counter(line.split(",")[0] for line in body.decode().splitlines()[1:])


@pytest.mark.timeout(120)
def test_disk_full_keeps_usage_in_the_spool_and_loses_nothing(tmp_path: Path,
                                                              small_disk: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(READ_TOKEN)
    server = ServerProcess(small_disk / "ledger.db", token_file).start()
    try:
        spool = UsageSpool(tmp_path / "spool")
        first = [build_event(i) for i in range(200)]
        for e in first:
            spool.append(e)
        shipper = UsageShipper(spool, server.url + "/v1/usage/events", WRITE_TOKEN,
                               batch_size=50)
        assert shipper.flush(timeout_s=20)

        filler = _fill(small_disk)
        more = [build_event(1000 + i, tenant="t") for i in range(1000)]
        for e in more:
            spool.append(e)
        assert not shipper.flush(timeout_s=3)  # every attempt is answered 5xx
        status, body = http(server.url + "/v1/usage/events",
                            body={"events": [e.to_dict() for e in more[:50]]})
        assert status == 503 and b"cannot write" in body
        assert len(spool.pending()) == len(more)  # nothing acked, nothing lost
        assert http(server.url + "/healthz", token=None)[0] == 200  # still up, still reads
        assert sum(_billed(server).values()) == len(first)

        os.unlink(filler)  # space returns
        assert shipper.flush(timeout_s=30)
        billed = _billed(server)
        assert set(billed) == {e.event_id for e in first + more}  # 0 lost
        assert set(billed.values()) == {1}  # 0 doubled
        summary = json.loads(http(server.url + "/v1/tenants/t/spend?month=2026-11",
                                  token=READ_TOKEN)[1])
        assert summary["tenant"] == "t"
    finally:
        server.stop()
