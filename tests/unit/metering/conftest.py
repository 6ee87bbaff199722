"""Builders shared by the metering unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deepserve.engine.usage import UsageEvent
from deepserve.operator.metering import UsageLedger

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def build_event(i: int = 0, **overrides: Any) -> UsageEvent:
    """A valid event ending ``i`` seconds after 10:00:01 on 2026-11-01 (UTC)."""
    started = overrides.pop("started_at", T0 + timedelta(seconds=i))
    fields: dict[str, Any] = {
        "model": "chat", "version": "v1", "namespace": "prod", "account": "acme",
        "request_id": f"req-{i}", "prompt_tokens": 10 + i % 7, "generated_tokens": 20 + i % 5,
        "compute_ms": 12.5, "precision": "bf16", "started_at": started,
        "ended_at": started + timedelta(seconds=1), "status": "ok",
    }
    fields.update(overrides)
    return UsageEvent.create(**fields)


@pytest.fixture
def make_event() -> Callable[..., UsageEvent]:
    return build_event


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[UsageLedger]:
    with UsageLedger(tmp_path / "ledger.db") as led:
        yield led
