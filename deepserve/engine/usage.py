"""Per-request usage events, a durable local spool and a shipper (stdlib only).

The engine backend builds one :class:`UsageEvent` per finished, cancelled or failed
request and calls :meth:`UsageSpool.append` (fsync'd before it returns). A
:class:`UsageShipper` thread POSTs pending events in JSON batches to the operator's
ingest endpoint and acknowledges them locally only after a 2xx answer, so delivery is
at least once; the operator ingests idempotently on ``event_id``, so usage is counted
exactly once.

Usage::

    spool = UsageSpool("/var/lib/deepserve/usage")
    spool.append(UsageEvent.create(model="m", version="1", namespace="ns", account="acme",
                                   request_id="r1", prompt_tokens=12, generated_tokens=30,
                                   compute_ms=41.5, precision="bf16",
                                   started_at=t0, ended_at=t1))
    shipper = UsageShipper(spool, "http://deepserve-operator:8090/v1/usage/events", token)
    shipper.start()  # ... shipper.stop(flush_timeout=5)

Wire format (one event, JSON): every dataclass field by name, timestamps as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``; a batch is ``{"events": [event, ...]}``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Namespace for uuid5 event ids: ``uuid5(USAGE_NAMESPACE, "namespace/model/version/request_id")``.
USAGE_NAMESPACE = uuid.UUID("6f6b1d0e-6a43-5c1e-9a57-5d2f0c3b9d11")

# -- The contract: every rule of a usage event, defined once -------------------------------
# The ingest side (deepserve.operator.metering.wire) builds its decoder from these and
# applies exactly these checks; nothing below is copied anywhere else.

#: Outcomes of a request.
STATUSES = ("ok", "cancelled", "error")
#: model, version, namespace, account and request_id: 1..253 characters of this class.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,252}$")
#: precision: a short lower-case tag (bf16, fp8, int4-awq, ...).
PRECISION_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,31}$")
#: Largest token count an event may carry (prompt_tokens, generated_tokens).
MAX_TOKENS = 10**12
#: tenant: the gateway-authenticated caller, 1..TENANT_MAX_LEN printable characters or null.
TENANT_MAX_LEN = 128
#: Fields that hold names matched by NAME_PATTERN.
NAME_FIELDS = ("model", "version", "namespace", "account", "request_id")
#: The wire type of every field, in order (JSON: numbers may be integers; times are text).
WIRE_TYPES: dict[str, Any] = {
    "event_id": str, "model": str, "version": str, "namespace": str, "account": str,
    "request_id": str, "prompt_tokens": int, "generated_tokens": int,
    "compute_ms": int | float, "precision": str, "started_at": str, "ended_at": str,
    "status": str, "tenant": str | None, "queue_ms": int | float | None,
    "ttft_ms": int | float | None,
}

NAME_MATCH = NAME_PATTERN.match
PRECISION_MATCH = PRECISION_PATTERN.match
#: Names and precision tags already seen valid (a cache: names are few, request ids are
#: not cached). Membership means "valid"; :func:`names_ok` and :func:`precision_ok` fill them.
KNOWN_NAMES: set[str] = set()
KNOWN_PRECISIONS: set[str] = {"fp32", "bf16", "fp16", "fp8"}


def names_ok(*values: Any) -> bool:
    """True when every value is a str matching NAME_PATTERN (valid ones are cached)."""
    for value in values:
        if value not in KNOWN_NAMES:
            if type(value) is not str or not NAME_MATCH(value):
                return False
            if len(KNOWN_NAMES) > 4096:  # bounded
                KNOWN_NAMES.clear()
            KNOWN_NAMES.add(value)
    return True


def precision_ok(value: Any) -> bool:
    """True when ``value`` is a precision tag matching PRECISION_PATTERN (cached)."""
    if value in KNOWN_PRECISIONS:
        return True
    if type(value) is not str or not PRECISION_MATCH(value):
        return False
    if len(KNOWN_PRECISIONS) > 256:
        KNOWN_PRECISIONS.clear()
    KNOWN_PRECISIONS.add(value)
    return True


def tenant_ok(value: Any) -> bool:
    """True for null or 1..TENANT_MAX_LEN printable characters."""
    return value is None or (type(value) is str and 0 < len(value) <= TENANT_MAX_LEN
                             and value.isprintable())


def tokens_ok(value: Any) -> bool:
    """True for an int (not bool) in 0..MAX_TOKENS."""
    return type(value) is int and 0 <= value <= MAX_TOKENS


class UsageEventError(ValueError):
    """A usage event is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_NS_BYTES = USAGE_NAMESPACE.bytes
_SHA1 = hashlib.sha1


def event_key(namespace: str, model: str, version: str, request_id: str) -> tuple[str, bytes]:
    """The event id of a request (uuid5 text, RFC 4122 §4.3) and its 16 bytes."""
    # Same bytes as uuid.uuid5, without the UUID object: this runs once per ingested event.
    # sha1 without usedforsecurity=False (the keyword costs 0.7 µs a call); where FIPS mode
    # refuses that, the keyword is given.
    data = _NS_BYTES + f"{namespace}/{model}/{version}/{request_id}".encode()
    try:
        digest = _SHA1(data).digest()
    except ValueError:
        digest = hashlib.sha1(data, usedforsecurity=False).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", bytes(raw)


def make_event_id(namespace: str, model: str, version: str, request_id: str) -> str:
    """Return the deterministic event id for a request: the string form of
    ``uuid5(USAGE_NAMESPACE, "namespace/model/version/request_id")`` (RFC 4122 §4.3)."""
    return event_key(namespace, model, version, request_id)[0]


def format_time(value: datetime) -> str:
    """Format an aware datetime as UTC ISO-8601 with microseconds and a ``Z`` suffix."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any, field: str) -> datetime:
    """Parse an ISO-8601 timestamp with an offset (or ``Z``) into an aware UTC datetime.

    Raises :class:`UsageEventError` naming ``field`` if the value is not such a string.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)  # 3.11+: accepts a trailing "Z"
        except ValueError:
            raise UsageEventError(field, f"not an ISO-8601 timestamp: {value!r}") from None
    else:
        raise UsageEventError(field, "must be an ISO-8601 timestamp string")
    if parsed.tzinfo is UTC:
        return parsed
    if parsed.tzinfo is None:
        raise UsageEventError(field, "timestamp needs a UTC offset (e.g. 'Z')")
    return parsed.astimezone(UTC)


def _check_name(field: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if type(value) is not str or not NAME_MATCH(value):
        raise UsageEventError(field, f"must be a non-empty name of [A-Za-z0-9._:/@+-], got {value!r}")


def _check_count(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageEventError(field, f"must be an integer, got {value!r}")
    if value < 0:
        raise UsageEventError(field, f"must not be negative, got {value}")
    if value > MAX_TOKENS:
        raise UsageEventError(field, f"implausibly large: {value}")


def _check_ms(field: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageEventError(field, f"must be a number of milliseconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise UsageEventError(field, f"must be finite and not negative, got {value}")


@dataclasses.dataclass(frozen=True, slots=True)
class UsageEvent:
    """What one request used. Validated on construction; invalid input raises UsageEventError.

    ``account`` is the model owner's billing account (charged the model's GPU-hours);
    ``tenant`` is the caller the gateway authenticated (header ``X-Deepserve-Tenant``, put
    in by the engine pod's OpenAI frontend): when set, the request's token and request
    charges are billed to it (docs/metering.md, "Billed to the caller").
    ``queue_ms`` and ``ttft_ms`` (time to first token) are optional timing details.
    """

    event_id: str
    model: str
    version: str
    namespace: str
    account: str
    request_id: str
    prompt_tokens: int
    generated_tokens: int
    compute_ms: float
    precision: str
    started_at: datetime
    ended_at: datetime
    status: str = "ok"
    tenant: str | None = None
    queue_ms: float | None = None
    ttft_ms: float | None = None

    def __post_init__(self) -> None:
        # Hot path (every ingested event): cheap exact-type checks first; the detailed
        # checkers run only to build the error message. Names repeat, so valid ones are
        # cached; request ids do not, so they are always matched.
        valid = KNOWN_NAMES
        if not (self.model in valid and self.version in valid and self.namespace in valid
                and self.account in valid):
            for name in ("model", "version", "namespace", "account"):
                value = getattr(self, name)
                if not names_ok(value):
                    _check_name(name, value)
        rid = self.request_id
        if type(rid) is not str or not NAME_MATCH(rid):
            _check_name("request_id", rid)
        if not tenant_ok(self.tenant):
            raise UsageEventError(
                "tenant", f"must be 1..{TENANT_MAX_LEN} printable characters or null")
        pt, gt = self.prompt_tokens, self.generated_tokens
        if not (tokens_ok(pt) and tokens_ok(gt)):
            _check_count("prompt_tokens", pt)
            _check_count("generated_tokens", gt)
        cms, qms, tms = self.compute_ms, self.queue_ms, self.ttft_ms
        if not (type(cms) is float and 0.0 <= cms < math.inf):
            _check_ms("compute_ms", cms)
        if qms is not None and not (type(qms) is float and 0.0 <= qms < math.inf):
            _check_ms("queue_ms", qms)
        if tms is not None and not (type(tms) is float and 0.0 <= tms < math.inf):
            _check_ms("ttft_ms", tms)
        if not precision_ok(self.precision):
            raise UsageEventError("precision",
                                  f"must be a short lower-case tag, got {self.precision!r}")
        if self.status not in STATUSES:
            raise UsageEventError("status",
                                  f"must be one of {', '.join(STATUSES)}, got {self.status!r}")
        object.__setattr__(self, "started_at", parse_time(self.started_at, "started_at"))
        object.__setattr__(self, "ended_at", parse_time(self.ended_at, "ended_at"))
        if self.ended_at < self.started_at:
            raise UsageEventError("ended_at", "is before started_at")
        expected = make_event_id(self.namespace, self.model, self.version, self.request_id)
        if self.event_id != expected:
            raise UsageEventError(
                "event_id", f"must be uuid5 of namespace/model/version/request_id ({expected})"
            )

    @classmethod
    def create(cls, **fields: Any) -> UsageEvent:
        """Build an event, deriving ``event_id`` from namespace/model/version/request_id."""
        for name in ("namespace", "model", "version", "request_id"):
            _check_name(name, fields.get(name))
        event_id = make_event_id(
            fields["namespace"], fields["model"], fields["version"], fields["request_id"]
        )
        return cls(event_id=event_id, **fields)

    @property
    def latency_ms(self) -> float:
        """Wall-clock time from start to end of the request, in milliseconds."""
        return (self.ended_at - self.started_at).total_seconds() * 1000.0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready wire form (timestamps as UTC ISO-8601 strings)."""
        out = {name: getattr(self, name) for name in _FIELD_ORDER}
        out["started_at"] = format_time(self.started_at)
        out["ended_at"] = format_time(self.ended_at)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageEvent:
        """Parse and validate the wire form; raises UsageEventError naming the bad field."""
        if not isinstance(data, Mapping):
            raise UsageEventError("event", "must be a JSON object")
        keys = data.keys()
        if not (keys <= _FIELD_SET and keys >= _REQUIRED):
            if not keys <= _FIELD_SET:
                raise UsageEventError(sorted(set(keys) - _FIELD_SET)[0], "unknown field")
            raise UsageEventError(sorted(_REQUIRED - set(keys))[0], "missing")
        return cls(**data)


_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(UsageEvent))
_FIELD_SET = frozenset(_FIELD_ORDER)
_REQUIRED = frozenset(f.name for f in dataclasses.fields(UsageEvent)
                      if f.default is dataclasses.MISSING)
if tuple(WIRE_TYPES) != _FIELD_ORDER:  # the contract's two views of the fields must agree
    raise AssertionError("WIRE_TYPES and UsageEvent's fields differ")
#: Each field's default on the wire (fields without one are required).
WIRE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(UsageEvent)
                                 if f.default is not dataclasses.MISSING}


def encode_batch(events: Iterable[UsageEvent]) -> bytes:
    """Encode events as the ingest endpoint's JSON body ``{"events": [...]}``."""
    return json.dumps({"events": [e.to_dict() for e in events]}, separators=(",", ":")).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UsageSpool:
    """A durable on-disk queue of usage events, safe for several writer processes.

    Each writer appends JSON lines to its own ``*.active.jsonl`` segment, holding an
    exclusive ``flock`` on it; :meth:`append` returns only after ``fsync``. A segment whose
    writer died (lock free) is sealed by the next process that opens the spool. Acks go to
    ``acked.log``; :meth:`compact` deletes sealed segments whose events are all acked.
    A torn last line (crash mid-append) is skipped on read: it was never acknowledged
    to the caller, so nothing that :meth:`append` returned for is lost.
    """

    def __init__(self, directory: str | os.PathLike[str], *, segment_bytes: int = 4 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fh: Any = None
        self._active: Path | None = None
        self._seal_orphans()

    # -- writing -------------------------------------------------------------------
    def append(self, event: UsageEvent) -> None:
        """Durably append one event (flushed and fsync'd before returning)."""
        line = json.dumps(event.to_dict(), separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._fh is None or self._fh.tell() >= self.segment_bytes:
                self._rotate()
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def _rotate(self) -> None:
        self._seal_current()
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.active.jsonl"
        path = self.dir / name
        fh = open(path, "ab")  # noqa: SIM115 - held open for the writer's lifetime
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_dir(self.dir)
        self._fh, self._active = fh, path

    def _seal_current(self) -> None:
        if self._fh is None or self._active is None:
            return
        sealed = self._active.with_name(self._active.name.replace(".active.jsonl", ".jsonl"))
        os.rename(self._active, sealed)
        _fsync_dir(self.dir)
        self._fh.close()  # closing releases the flock
        self._fh, self._active = None, None

    def _seal_orphans(self) -> None:
        for path in sorted(self.dir.glob("seg-*.active.jsonl")):
            try:
                with open(path, "rb+") as fh:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live writer owns it
                    self._truncate_torn_tail(fh)
                    os.rename(path, path.with_name(path.name.replace(".active.jsonl", ".jsonl")))
            except FileNotFoundError:
                continue  # another process sealed it first
        _fsync_dir(self.dir)

    @staticmethod
    def _truncate_torn_tail(fh: Any) -> None:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
            os.fsync(fh.fileno())

    def close(self) -> None:
        """Seal this writer's segment and release its lock."""
        with self._lock:
            self._seal_current()

    # -- reading and acking --------------------------------------------------------
    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.jsonl"))

    def _acked(self) -> set[str]:
        try:
            text = (self.dir / "acked.log").read_text()
        except FileNotFoundError:
            return set()
        return {line for line in text.split("\n") if line}

    def _iter_segment(self, path: Path) -> Iterator[UsageEvent]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        for raw in data.split(b"\n"):
            if not raw:
                continue
            try:
                yield UsageEvent.from_dict(json.loads(raw))
            except (ValueError, TypeError):
                log.warning("skipping unreadable spool line in %s", path.name)

    def pending(self, limit: int | None = None) -> list[UsageEvent]:
        """Return events appended but not yet acked, oldest segment first."""
        acked = self._acked()
        out: list[UsageEvent] = []
        seen: set[str] = set()
        for path in self._segments():
            for event in self._iter_segment(path):
                if event.event_id in acked or event.event_id in seen:
                    continue
                seen.add(event.event_id)
                out.append(event)
                if limit is not None and len(out) >= limit:
                    return out
        return out

    def ack(self, ids: Iterable[str]) -> None:
        """Durably record that these event ids were accepted by the operator."""
        lines = "".join(f"{i}\n" for i in ids)
        if not lines:
            return
        with self._spool_lock():
            fd = os.open(self.dir / "acked.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def quarantine(self, event: UsageEvent, reason: str) -> None:
        """Move an event the operator refuses into ``rejected.jsonl`` (kept, not shipped)."""
        record = {"reason": reason, "event": event.to_dict()}
        with open(self.dir / "rejected.jsonl", "ab") as fh:
            fh.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.ack([event.event_id])

    def compact(self) -> int:
        """Delete sealed segments whose events are all acked; return how many were removed."""
        removed = 0
        with self._spool_lock():
            acked = self._acked()
            still_referenced: set[str] = set()
            for path in self._segments():
                ids = {e.event_id for e in self._iter_segment(path)}
                if not path.name.endswith(".active.jsonl") and ids <= acked:
                    path.unlink(missing_ok=True)
                    removed += 1
                else:
                    still_referenced |= ids & acked
            tmp = self.dir / "acked.log.tmp"
            tmp.write_text("".join(f"{i}\n" for i in sorted(still_referenced)))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / "acked.log")
            _fsync_dir(self.dir)
        return removed

    def _spool_lock(self) -> _FileLock:
        return _FileLock(self.dir / "spool.lock")


class _FileLock:
    """An exclusive flock on a file, as a context manager (serialises acks and compaction)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> _FileLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # releases the lock


class UsageShipper:
    """Background thread that POSTs pending spool events to the operator and acks on 2xx.

    Answers: 2xx -> ack every id of the batch (accepted, duplicates and quarantined are
    all kept by the operator); 400 naming an ``event_id`` -> that event is quarantined in
    the spool and the rest is retried at once; anything else (401, 403, 5xx, network) ->
    exponential backoff with jitter, the events staying in the spool.

    The bearer token (the model's write credential) is ``token``, or read from
    ``token_file`` before every request (so a rotated Secret is picked up; it is never
    taken from argv or the environment here).
    """

    def __init__(self, spool: UsageSpool, endpoint: str, token: str = "", *,
                 token_file: str | os.PathLike[str] | None = None, batch_size: int = 500,
                 interval_s: float = 1.0, timeout_s: float = 10.0, max_backoff_s: float = 30.0,
                 ) -> None:
        self.spool, self.endpoint, self.token = spool, endpoint, token
        self.token_file = None if token_file is None else Path(token_file)
        self.batch_size, self.interval_s = batch_size, interval_s
        self.timeout_s, self.max_backoff_s = timeout_s, max_backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def ship_once(self) -> int:
        """Send one batch; return how many events were acked. Raises OSError on failure."""
        batch = self.spool.pending(limit=self.batch_size)
        if not batch:
            return 0
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text(encoding="utf-8").strip()  # OSError: retried
        request = urllib.request.Request(
            self.endpoint, data=encode_batch(batch), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as err:
            body = err.read()
            if err.code == 400 and self._quarantine_named(batch, body):
                return 1
            raise OSError(f"ingest answered {err.code}: {body[:300]!r}") from err
        self.spool.ack(e.event_id for e in batch)
        return len(batch)

    def _quarantine_named(self, batch: list[UsageEvent], body: bytes) -> bool:
        try:
            bad_id = json.loads(body).get("event_id")
        except (ValueError, AttributeError):
            return False
        for event in batch:
            if event.event_id == bad_id:
                log.error("operator refused usage event %s: %s", bad_id, body[:300])
                self.spool.quarantine(event, body.decode(errors="replace"))
                return True
        return False

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Ship until nothing is pending or the timeout passes; return True if drained."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.ship_once() == 0:
                    return True
            except OSError as err:
                log.warning("usage flush failed: %s", err)
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        return not self.spool.pending(limit=1)

    def _run(self) -> None:
        backoff = self.interval_s
        while not self._stop.is_set():
            try:
                sent = self.ship_once()
                self.failures, backoff = 0, self.interval_s
                if sent:
                    continue  # more may be waiting
                if self.spool.pending(limit=1) == []:
                    self.spool.compact()
            except OSError as err:
                self.failures += 1
                backoff = min(self.max_backoff_s, backoff * 2)
                log.warning("usage shipping failed (%d in a row): %s", self.failures, err)
            self._stop.wait(backoff * (0.5 + random.random() / 2) if self.failures else backoff)

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="usage-shipper", daemon=True)
            self._thread.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop the thread, then try to drain what is pending within ``flush_timeout``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)
        if flush_timeout > 0:
            self.flush(flush_timeout)
