"""Shared basics of the metering ledger: time in integer microseconds, window checks,
and the error type that names the offending field."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000
_ONE_US = timedelta(microseconds=1)


def to_us(t: datetime) -> int:
    """Exact integer microseconds since the epoch for an aware datetime."""
    d = t - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(us: int) -> datetime:
    """Inverse of :func:`to_us` (UTC)."""
    return EPOCH + timedelta(microseconds=us)


class LedgerError(ValueError):
    """Input refused by the ledger; ``field`` names what was wrong, nothing was written."""

    def __init__(self, field: str, message: str, *, index: int | None = None,
                 event_id: str | None = None) -> None:
        where = f"events[{index}]." if index is not None else ""
        super().__init__(f"{where}{field}: {message}")
        self.field, self.message, self.index, self.event_id = field, message, index, event_id


def check_window(start: datetime, end: datetime) -> None:
    """Raise LedgerError unless ``start < end`` and both carry a timezone."""
    if start.tzinfo is None or end.tzinfo is None:
        raise LedgerError("from" if start.tzinfo is None else "to", "needs a UTC offset")
    if end <= start:
        raise LedgerError("to", f"must be after from ({start.isoformat()} >= {end.isoformat()})")


def parse_bound(text: str, field: str) -> datetime:
    """Parse a window bound: ISO-8601 with offset or ``Z``, or a date (UTC midnight).

    Raises LedgerError naming ``field`` otherwise.
    """
    if not text:
        raise LedgerError(field, "is required")
    try:
        if len(text) == 10:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise LedgerError(field, f"not an ISO-8601 time or date: {text!r}") from None
    if value.tzinfo is None:
        raise LedgerError(field, f"needs a UTC offset such as 'Z': {text!r}")
    return value.astimezone(UTC)


def chunks(seq: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Split ``seq`` into slices of at most ``size`` (SQLite limits bound parameters)."""
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
