"""Reconciliation: usage events (what we bill) against Triton's counters (what the
servers saw), per model version and window, with the gap.

Counters are stored per hour of the scrape, so the window is widened to whole UTC hours
for both sides. A scrape lands a little after the requests it counts, so small gaps at
the edge of the window are expected; inside a closed window they should be zero.
``gap = counters - events``: positive means requests served but not (yet) billed.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from deepserve.operator.metering.ledger import HOUR_US, UsageLedger, check_window, from_us, to_us


@dataclasses.dataclass(frozen=True)
class ReconcileLine:
    """Events vs counters for one model version."""

    namespace: str
    model: str
    version: str
    event_requests: int
    counter_requests: float | None
    event_prompt_tokens: int
    counter_prompt_tokens: float | None
    event_generated_tokens: int
    counter_generated_tokens: float | None

    @staticmethod
    def _gap(counter: float | None, events: int) -> float | None:
        return None if counter is None else counter - events

    @property
    def request_gap(self) -> float | None:
        """Counter requests minus billed requests (None without counters)."""
        return self._gap(self.counter_requests, self.event_requests)

    @property
    def prompt_token_gap(self) -> float | None:
        """Counted prompt tokens minus billed ones (None without counters)."""
        return self._gap(self.counter_prompt_tokens, self.event_prompt_tokens)

    @property
    def generated_token_gap(self) -> float | None:
        """Counted generated tokens minus billed ones (None without counters)."""
        return self._gap(self.counter_generated_tokens, self.event_generated_tokens)

    @property
    def status(self) -> str:
        """``ok`` (no gap), ``gap``, or ``no-counters`` when nothing was scraped."""
        gaps = [self.request_gap, self.prompt_token_gap, self.generated_token_gap]
        if self.counter_requests is None:
            return "no-counters"
        return "ok" if all(g in (None, 0) for g in gaps) else "gap"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form including gaps and status."""
        out = dataclasses.asdict(self)
        out.update(request_gap=self.request_gap, prompt_token_gap=self.prompt_token_gap,
                   generated_token_gap=self.generated_token_gap, status=self.status)
        return out


@dataclasses.dataclass(frozen=True)
class ReconcileReport:
    """The report for [start, end) (whole hours)."""

    start: datetime
    end: datetime
    lines: list[ReconcileLine]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"from": self.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "to": self.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "lines": [line.to_dict() for line in self.lines]}

    def to_text(self) -> str:
        """A table for people."""
        head = (f"{'MODEL':40} {'REQ(ev)':>9} {'REQ(ctr)':>9} {'GAP':>7} "
                f"{'GEN(ev)':>11} {'GEN(ctr)':>11} {'GAP':>8}  STATUS")
        rows = [head]

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:g}"

        for ln in self.lines:
            name = f"{ln.namespace}/{ln.model}/{ln.version}"
            rows.append(f"{name:40} {ln.event_requests:>9} {num(ln.counter_requests):>9} "
                        f"{num(ln.request_gap):>7} {ln.event_generated_tokens:>11} "
                        f"{num(ln.counter_generated_tokens):>11} "
                        f"{num(ln.generated_token_gap):>8}  {ln.status}")
        return "\n".join(rows) + "\n"


def reconcile(ledger: UsageLedger, start: datetime, end: datetime) -> ReconcileReport:
    """Compare billed events with scraped counters per model version over whole hours."""
    check_window(start, end)
    s_us = to_us(start) - to_us(start) % HOUR_US
    e_us = -(-to_us(end) // HOUR_US) * HOUR_US
    lo, hi = from_us(s_us), from_us(e_us)
    events: dict[tuple[str, str, str], list[int]] = {}
    for row in ledger.usage_rows(lo, hi):
        acc = events.setdefault((row.namespace, row.model, row.version), [0, 0, 0])
        acc[0] += row.requests
        acc[1] += row.prompt_tokens
        acc[2] += row.generated_tokens
    counters = ledger.counter_totals(lo, hi)
    lines = []
    for key in sorted(set(events) | set(counters)):
        ev = events.get(key, [0, 0, 0])
        ctr = counters.get(key)
        lines.append(ReconcileLine(
            namespace=key[0], model=key[1], version=key[2], event_requests=ev[0],
            counter_requests=None if ctr is None else ctr.get("requests_success", 0.0)
            + ctr.get("requests_failure", 0.0),
            event_prompt_tokens=ev[1],
            counter_prompt_tokens=None if ctr is None else ctr.get("prompt_tokens"),
            event_generated_tokens=ev[2],
            counter_generated_tokens=None if ctr is None else ctr.get("generated_tokens"),
        ))
    return ReconcileReport(lo, hi, lines)
