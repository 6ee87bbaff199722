"""The ingest endpoint's JSON batches, decoded and validated straight into ledger rows.

``decode_batch(body)`` is the fast path for ``{"events": [...]}`` bodies: msgspec decodes
the JSON into typed structs (types, unknown and missing fields), then one loop applies
the rest of the usage contract (names, ranges, timestamps, the uuid5 event id) and builds
the row the ledger stores. It only ever says yes to a batch that ``UsageEvent.from_dict``
accepts with the same values; for anything else it returns None and the caller takes the
slow path (``json.loads`` + ``UsageEvent.from_dict``), which accepts what it always
accepted and raises the error that names the field.

Nothing here defines a rule: the fields, their wire types and defaults, the patterns and
the limits all come from the contract module :mod:`deepserve.engine.usage` (the struct is
built from ``WIRE_TYPES``/``WIRE_DEFAULTS``; the checks call or inline its constants), so
this module is only ever faster, never laxer: ``tests/unit/metering/test_wire.py`` checks
both paths agree on many mutated batches.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from deepserve.engine.usage import (
    KNOWN_NAMES,
    KNOWN_PRECISIONS,
    MAX_TOKENS,
    NAME_MATCH,
    STATUSES,
    WIRE_DEFAULTS,
    WIRE_TYPES,
    event_key,
    names_ok,
    precision_ok,
    tenant_ok,
)
from deepserve.operator.metering.base import EPOCH

#: A stored event: (event_id, namespace, model, version, account, tenant, request_id,
#: prompt_tokens, generated_tokens, compute_ms, precision, status, started_us, ended_us,
#: queue_ms, ttft_ms) — what ``UsageLedger.iter_events`` yields.
Row = tuple[str, str, str, str, str, str | None, str, int, int, float, str, str, int, int,
            float | None, float | None]

_MAX_INT64 = 2**63 - 1  # SQLite stored REAL columns from integers of at most this size
_ONE_US = timedelta(microseconds=1)
_FROM_ISO = datetime.fromisoformat

#: The wire form's types, built from the contract; msgspec refuses wrong types, unknown
#: and missing fields.
_WireEvent: Any = msgspec.defstruct(
    "_WireEvent",
    [(name, typ, WIRE_DEFAULTS[name]) if name in WIRE_DEFAULTS else (name, typ)
     for name, typ in WIRE_TYPES.items()],
    forbid_unknown_fields=True, gc=False)
_WireBatch: Any = msgspec.defstruct("_WireBatch", [("events", list[_WireEvent])], gc=False)
_DECODER = msgspec.json.Decoder(_WireBatch)
#: Tenants ``tenant_ok`` accepted (a few per ledger; bounded), so the check is a set lookup.
_KNOWN_TENANTS: set[str] = set()

__all__ = ["Row", "decode_batch", "event_key", "id_bytes", "stored_real"]


def id_bytes(event_id: str) -> bytes:
    """The 16 bytes of a (validated) event id's text form."""
    return bytes.fromhex(event_id.replace("-", ""))


def stored_real(value: Any) -> float:
    """A milliseconds value as the ledger stores it: a float, ``-0.0`` as ``0.0``
    (what SQLite's REAL column did). Raises OverflowError for integers SQLite refused."""
    if type(value) is int and not -_MAX_INT64 - 1 <= value <= _MAX_INT64:
        raise OverflowError("integer too large for a stored milliseconds value")
    return float(value) + 0.0


def _real(value: int | float) -> float:
    """A valid milliseconds value as stored, or -1.0 where the slow path must judge."""
    if type(value) is float:
        return value + 0.0 if 0.0 <= value < math.inf else -1.0
    return float(value) if 0 <= value <= _MAX_INT64 else -1.0


def decode_batch(body: bytes) -> tuple[list[Row], list[bytes]] | None:
    """Decode and validate a ``{"events": [...]}`` body into rows and their id keys.

    Returns None when the fast path cannot vouch for the batch (malformed JSON, a bad or
    unusual value): the caller must then take the slow path, which accepts or names the
    field. Never returns rows for a batch that ``UsageEvent.from_dict`` would refuse.
    """
    try:
        batch = _DECODER.decode(body)
    except (msgspec.MsgspecError, ValueError):  # ValueError: e.g. invalid UTF-8
        return None
    rows: list[Row] = []
    keys: list[bytes] = []
    names, precisions, statuses, known_tenants = (KNOWN_NAMES, KNOWN_PRECISIONS, STATUSES,
                                                  _KNOWN_TENANTS)
    inf, epoch, one_us, from_iso, name_ok = math.inf, EPOCH, _ONE_US, _FROM_ISO, NAME_MATCH
    try:
        for e in batch.events:  # hot: one pass, cheap checks first, no calls where avoidable
            ns, model, version, account, rid = (e.namespace, e.model, e.version, e.account,
                                                e.request_id)
            if not ((ns in names and model in names and version in names and account in names)
                    or names_ok(ns, model, version, account)) or not name_ok(rid):
                return None
            tenant = e.tenant
            if tenant is not None and tenant not in known_tenants:
                if not tenant_ok(tenant):
                    return None
                if len(known_tenants) > 4096:
                    known_tenants.clear()
                known_tenants.add(tenant)
            pt, gt = e.prompt_tokens, e.generated_tokens
            if not (0 <= pt <= MAX_TOKENS and 0 <= gt <= MAX_TOKENS):
                return None
            cms, qms, tms = e.compute_ms, e.queue_ms, e.ttft_ms
            cms = cms + 0.0 if type(cms) is float and 0.0 <= cms < inf else _real(cms)
            if qms is not None:
                qms = qms + 0.0 if type(qms) is float and 0.0 <= qms < inf else _real(qms)
            if tms is not None:
                tms = tms + 0.0 if type(tms) is float and 0.0 <= tms < inf else _real(tms)
            if cms == -1.0 or qms == -1.0 or tms == -1.0:
                return None
            precision, status = e.precision, e.status
            if precision not in precisions and not precision_ok(precision):
                return None
            if status not in statuses:
                return None
            started, ended = from_iso(e.started_at), from_iso(e.ended_at)
            if started.tzinfo is not UTC or ended.tzinfo is not UTC:
                if started.tzinfo is None or ended.tzinfo is None:
                    return None
                # as parse_time does (it raises OverflowError at the ends of time)
                started, ended = started.astimezone(UTC), ended.astimezone(UTC)
            s_us, e_us = (started - epoch) // one_us, (ended - epoch) // one_us
            if e_us < s_us:
                return None
            event_id, key = event_key(ns, model, version, rid)
            if e.event_id != event_id:
                return None
            rows.append((event_id, ns, model, version, account, tenant, rid, pt, gt, cms,
                         precision, status, s_us, e_us, qms, tms))
            keys.append(key)
    except (ValueError, OverflowError):  # a timestamp fromisoformat or astimezone refused
        return None
    return rows, keys
