"""Billing exports: FOCUS CSV, CloudEvents JSON lines (as OpenMeter ingests), and a
plain per-event CSV. Every export is a pure function of the ledger's contents for the
window, so exporting the same window twice gives byte-identical output.

CloudEvents 1.0 (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md):
``id`` is the usage event id (uuid5 of the request), ``subject`` who is billed (the
caller's tenant when the event has one, else the model owner's account; GPU intervals:
the owner's), ``source`` ``deepserve/<namespace>/<model>``; OpenMeter deduplicates on
(id, source).

Every export takes ``account`` (one model owner: its models' usage and GPU time) and
``tenant`` (one caller: only its own usage, no GPU time, which the owner pays).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from deepserve.operator.metering.focus import focus_metadata_json, write_focus_csv
from deepserve.operator.metering.ledger import UsageLedger, check_window, from_us

FORMATS = ("focus", "cloudevents", "csv")
USAGE_EVENT_TYPE = "io.deepserve.inference.usage"
GPU_EVENT_TYPE = "io.deepserve.gpu.usage"
CSV_COLUMNS = ("event_id", "ended_at", "started_at", "account", "namespace", "model",
               "version", "tenant", "request_id", "status", "precision", "prompt_tokens",
               "generated_tokens", "compute_ms", "queue_ms", "ttft_ms")


def _iso_us(us: int) -> str:
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_cloudevents(ledger: UsageLedger, start: datetime, end: datetime, out: TextIO,
                      account: str | None = None, tenant: str | None = None) -> int:
    """Write one CloudEvent JSON object per line (usage events, then GPU intervals)."""
    dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    n = 0
    for (eid, ns, model, ver, acct, caller, rid, pt, gt, cms, prec, status, _s_us, e_us,
         qms, tms) in ledger.iter_events(start, end, account, tenant):
        out.write(dumps({
            "specversion": "1.0", "type": USAGE_EVENT_TYPE, "id": eid,
            "source": f"deepserve/{ns}/{model}", "subject": caller or acct,
            "time": _iso_us(e_us),
            "datacontenttype": "application/json",
            "data": {"model": model, "version": ver, "namespace": ns, "request_id": rid,
                     "prompt_tokens": pt, "generated_tokens": gt, "total_tokens": pt + gt,
                     "compute_ms": cms, "precision": prec, "status": status,
                     "queue_ms": qms, "ttft_ms": tms,
                     "tenant": caller, "account": acct},
        }) + "\n")
        n += 1
    for iv in [] if tenant else ledger.gpu_intervals_in(start, end, account):
        out.write(dumps({
            "specversion": "1.0", "type": GPU_EVENT_TYPE, "id": iv["interval_id"],
            "source": f"deepserve/{iv['namespace']}/{iv['model']}", "subject": iv["account"],
            "time": _iso_us(iv["end_us"]), "datacontenttype": "application/json",
            "data": {"model": iv["model"], "version": iv["version"],
                     "namespace": iv["namespace"], "pod": iv["pod"], "pool": iv["pool"],
                     "gpus": iv["gpus"], "gpu_seconds": iv["gpu_seconds"],
                     "start": _iso_us(iv["start_us"]), "end": _iso_us(iv["end_us"])},
        }) + "\n")
        n += 1
    return n


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    text = str(v)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def write_events_csv(ledger: UsageLedger, start: datetime, end: datetime, out: TextIO,
                     account: str | None = None, tenant: str | None = None) -> int:
    """Write one CSV row per usage event (audit detail; nulls are empty fields)."""
    out.write(",".join(CSV_COLUMNS) + "\n")
    n = 0
    for (eid, ns, model, ver, acct, caller, rid, pt, gt, cms, prec, status, s_us, e_us,
         qms, tms) in ledger.iter_events(start, end, account, tenant):
        fields = (eid, _iso_us(e_us), _iso_us(s_us), acct, ns, model, ver, caller, rid,
                  status, prec, pt, gt, cms, qms, tms)
        out.write(",".join(_csv_value(f) for f in fields) + "\n")
        n += 1
    return n


def export(ledger: UsageLedger, fmt: str, start: datetime, end: datetime, out: TextIO,
           account: str | None = None, tenant: str | None = None) -> int:
    """Write the export ``fmt`` (one of FORMATS) to ``out``; return the record count.

    Raises ValueError (LedgerError) for an unknown format or an inverted window.
    """
    writers: dict[str, Callable[..., int]] = {
        "focus": write_focus_csv, "cloudevents": write_cloudevents, "csv": write_events_csv,
    }
    if fmt not in writers:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_window(start, end)
    return writers[fmt](ledger, start, end, out, account or None, tenant or None)


def _atomic_write(path: Path, produce: Callable[[TextIO], Any]) -> Any:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            result = produce(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def export_to_file(ledger: UsageLedger, fmt: str, start: datetime, end: datetime,
                   path: str | Path, account: str | None = None,
                   tenant: str | None = None) -> int:
    """Export atomically to ``path`` (temp file + rename: a failure leaves nothing).

    For ``focus`` the metadata file is written next to it as ``<path>.metadata.json``.
    """
    target = Path(path)
    check_window(start, end)
    count = _atomic_write(target, lambda fh: export(ledger, fmt, start, end, fh, account,
                                                    tenant))
    if fmt == "focus":
        _atomic_write(target.with_name(target.name + ".metadata.json"),
                      lambda fh: fh.write(focus_metadata_json()))
    return count
