"""The ingest endpoint's JSON batches, decoded and validated straight into ledger rows.

``decode_batch(body)`` is the fast path for ``{"events": [...]}`` bodies: msgspec decodes
the JSON into typed structs (types, unknown and missing fields), then one loop applies
the rest of :class:`deepserve.engine.usage.UsageEvent`'s rules (names, ranges, timestamps,
the uuid5 event id) and builds the row the ledger stores. It only ever says yes to a batch
that ``UsageEvent.from_dict`` accepts with the same values; for anything else it returns
None and the caller takes the slow path (``json.loads`` + ``UsageEvent.from_dict``),
which accepts what it always accepted and raises the error that names the field. So the
rules have one authority (the engine's), and this module is only ever faster, never laxer:
``tests/unit/metering/test_wire.py`` checks both paths agree on many mutated batches.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from deepserve.engine.usage import STATUSES, USAGE_NAMESPACE
from deepserve.operator.metering.base import EPOCH

#: A stored event: (event_id, namespace, model, version, account, tenant, request_id,
#: prompt_tokens, generated_tokens, compute_ms, precision, status, started_us, ended_us,
#: queue_ms, ttft_ms) — what ``UsageLedger.iter_events`` yields.
Row = tuple[str, str, str, str, str, str | None, str, int, int, float, str, str, int, int,
            float | None, float | None]

_MAX_TOKENS = 10**12
_MAX_INT64 = 2**63 - 1  # SQLite stored REAL columns from integers of at most this size
# The engine's own patterns (UsageEvent uses them with re.match).
_NAME_MATCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,252}$").match
_PRECISION_MATCH = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,31}$").match
_NS_BYTES = USAGE_NAMESPACE.bytes
_SHA1 = hashlib.sha1
_ONE_US = timedelta(microseconds=1)
_FROM_ISO = datetime.fromisoformat


class _WireEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The wire form's types; msgspec refuses wrong types, unknown and missing fields."""

    event_id: str
    model: str
    version: str
    namespace: str
    account: str
    request_id: str
    prompt_tokens: int
    generated_tokens: int
    compute_ms: int | float
    precision: str
    started_at: str
    ended_at: str
    status: str = "ok"
    tenant: str | None = None
    queue_ms: int | float | None = None
    ttft_ms: int | float | None = None


class _WireBatch(msgspec.Struct, gc=False):
    events: list[_WireEvent]


_DECODER = msgspec.json.Decoder(_WireBatch)

def event_key(namespace: str, model: str, version: str, request_id: str) -> tuple[str, bytes]:
    """Return the event id that ``make_event_id`` gives (uuid5 text) and its 16 bytes."""
    # hashlib.sha1 without usedforsecurity=False: the keyword costs 0.7 µs a call here. Where
    # FIPS mode refuses SHA-1 that way, decode_batch's ValueError sends batches to the slow path.
    raw = bytearray(_SHA1(_NS_BYTES + f"{namespace}/{model}/{version}/{request_id}".encode()
                          ).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", bytes(raw)


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


_names: set[str] = set()
_precisions: set[str] = {"fp32", "bf16", "fp16", "fp8"}


def _valid_names(*values: str) -> bool:
    for value in values:
        if value not in _names:
            if not _NAME_MATCH(value):
                return False
            if len(_names) > 4096:  # bounded: names are few, request ids are not cached
                _names.clear()
            _names.add(value)
    return True


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
    names, precisions, statuses = _names, _precisions, STATUSES
    inf, epoch, one_us, from_iso, name_ok = math.inf, EPOCH, _ONE_US, _FROM_ISO, _NAME_MATCH
    try:
        for e in batch.events:  # hot: one pass, cheap checks first, no calls where avoidable
            ns, model, version, account, rid = (e.namespace, e.model, e.version, e.account,
                                                e.request_id)
            if not ((ns in names and model in names and version in names and account in names)
                    or _valid_names(ns, model, version, account)) or not name_ok(rid):
                return None
            tenant = e.tenant
            if tenant is not None and not (0 < len(tenant) <= 128 and tenant.isprintable()):
                return None
            pt, gt = e.prompt_tokens, e.generated_tokens
            if not (0 <= pt <= _MAX_TOKENS and 0 <= gt <= _MAX_TOKENS):
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
            if precision not in precisions:
                if not _PRECISION_MATCH(precision):
                    return None
                precisions.add(precision)
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
