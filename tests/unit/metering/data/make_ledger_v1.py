"""Writes ledger_v1.sql and the golden exports next to it.

Run once with the schema-1 ledger (commit 3ad244f, before the schema-2 event store):
``.venv/bin/python tests/unit/metering/data/make_ledger_v1.py``. The files it wrote are
what test_ledger_migration.py checks a migrated ledger against; running it again with a
newer ledger would write a newer schema and is not what the files are. The FOCUS and
CloudEvents goldens were later rewritten from a new ledger filled by :func:`fill` when
usage became billed to the caller (see test_ledger_migration.py).
"""

from __future__ import annotations

import io
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deepserve.engine.usage import UsageEvent
from deepserve.operator.metering import PriceSheet, UsageLedger, export

HERE = Path(__file__).parent
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
WINDOWS = {
    "aligned": (T0 - timedelta(hours=2), T0 + timedelta(hours=6)),
    "unaligned": (T0 + timedelta(minutes=17), T0 + timedelta(hours=2, minutes=3, seconds=5)),
}


def fixture_events() -> list[UsageEvent]:
    """Varied events: ties on end time, three accounts, nulls, odd tenants and floats."""
    out = []
    tenants: list[Any] = [None, "t1", 'team a, "quoted"', "é-ü"]
    for i in range(150):
        start = T0 + timedelta(seconds=(i * 433) % 10_800, microseconds=(i * 7) % 1000)
        end = start + timedelta(milliseconds=(i * 37) % 5000)
        if i % 10 == 3:  # same end time as the event before: order falls back to the id
            end = out[-1].ended_at
            start = min(start, end)
        out.append(UsageEvent.create(
            model=("chat", "embed", "chat-draft")[i % 3], version=f"v{i % 2}",
            namespace=("prod", "lab")[i % 2], account=("acme", "globex", "initech")[i % 3],
            request_id=f"r-{i}", prompt_tokens=(i * 131) % 4000, generated_tokens=(i * 17) % 900,
            compute_ms=(12, -0.0, 41.37, 1e-7, 3.0)[i % 5], precision=("bf16", "fp8")[i % 2],
            started_at=start, ended_at=end, status=("ok", "ok", "cancelled", "error")[i % 4],
            tenant=tenants[i % 4], queue_ms=(None, 0.25, 7)[i % 3],
            ttft_ms=None if i % 5 == 0 else 11.5 + i))
    return out


def set_prices(ledger: UsageLedger) -> None:
    ledger.set_prices(PriceSheet.from_dict({"default": {
        "promptPerMillion": "0.5", "generatedPerMillion": "1.5", "perRequest": "0.0001"}}),
        T0 - timedelta(days=1))


def batches() -> list[list[UsageEvent]]:
    """The events in batches of 40, each re-sending the 3 events before it."""
    events = fixture_events()
    return [events[max(0, i - 3):i + 40] for i in range(0, len(events), 40)]


def fill(ledger: UsageLedger) -> None:
    """Prices, then the batches."""
    set_prices(ledger)
    for i, batch in enumerate(batches()):
        ledger.ingest(batch, now=T0 + timedelta(hours=8, seconds=40 * i))


def exports(ledger: UsageLedger) -> dict[str, str]:
    """Every export format for both windows, plus one account's FOCUS rows."""
    out = {}
    for fmt in ("focus", "cloudevents", "csv"):
        for name, (start, end) in WINDOWS.items():
            buf = io.StringIO()
            export(ledger, fmt, start, end, buf)
            out[f"{fmt}-{name}"] = buf.getvalue()
    buf = io.StringIO()
    export(ledger, "focus", *WINDOWS["unaligned"], buf, "globex")
    out["focus-unaligned-globex"] = buf.getvalue()
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v1.db"
        with UsageLedger(path) as ledger:
            assert ledger.schema_version == 1, "run this with the schema-1 ledger"
            fill(ledger)
            for name, text in exports(ledger).items():
                (HERE / f"golden-{name}.txt").write_text(text, encoding="utf-8", newline="")
        conn = sqlite3.connect(path)
        dump = "\n".join(conn.iterdump())
        conn.close()
    (HERE / "ledger_v1.sql").write_text(dump + "\n", encoding="utf-8")
    print("wrote", HERE, file=sys.stderr)


if __name__ == "__main__":
    main()
