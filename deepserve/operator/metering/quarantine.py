"""The ledger's model registry and quarantine (mixed into UsageLedger; see trust.py).

A quarantined event is stored whole (its ledger row, MessagePack) with the reason and
when it arrived, keyed by its 16-byte id: sending it again keeps one copy. It is in no
bill until :meth:`release_quarantined` moves it into the event store (idempotent there
too: an id billed meanwhile is reported a duplicate).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from deepserve.operator.metering.base import chunks, from_us
from deepserve.operator.metering.wire import Row, id_bytes

_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE_ROW = msgspec.msgpack.Decoder(Row).decode
_FIELDS = ("event_id", "namespace", "model", "version", "account", "tenant", "request_id",
           "prompt_tokens", "generated_tokens", "compute_ms", "precision", "status")


class QuarantineStore:
    """Ledger methods for the owner registry and quarantined events."""

    def _write(self, work: Any) -> Any:
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _ingest_rows(self, rows: list[Row], keys: list[bytes], events: Any, *, now: Any,
                     trust: Any = None) -> Any:
        raise NotImplementedError

    # -- owners -------------------------------------------------------------------
    def set_owners(self, owners: Mapping[tuple[str, str], str]) -> None:
        """Replace the model registry: (namespace, model) -> owning account. When it is
        not empty, events of other models or accounts are quarantined."""
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM owners")
            conn.executemany("INSERT INTO owners VALUES (?, ?, ?)",
                             sorted((ns, m, a) for (ns, m), a in owners.items()))
        self._write(work)

    def owners_of(self, pairs: Iterable[tuple[str, str]]
                  ) -> dict[tuple[str, str], str] | None:
        """The registered owners of these (namespace, model) pairs; None when the
        registry is empty (no model is then unknown)."""
        if not self._read("SELECT 1 FROM owners LIMIT 1"):
            return None
        found: dict[tuple[str, str], str] = {}
        for ns, model in pairs:
            for (account,) in self._read(
                    "SELECT account FROM owners WHERE namespace = ? AND model = ?", (ns, model)):
                found[(ns, model)] = account
        return found

    # -- quarantine ---------------------------------------------------------------
    @staticmethod
    def _hold(conn: sqlite3.Connection, held: Sequence[tuple[Row, bytes, str]],
              received_us: int, billed: set[bytes]) -> tuple[list[str], list[str]]:
        """Inside an ingest transaction: store held rows; return (quarantined ids,
        ids already billed (``billed``: their keys), which are duplicates)."""
        quarantined, duplicates = [], []
        for row, key, reason in held:
            if key in billed:
                duplicates.append(row[0])
                continue
            conn.execute("INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?)",
                         (key, received_us, reason, _ENCODE(row)))
            quarantined.append(row[0])
        return quarantined, duplicates

    def quarantined(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Quarantined events, oldest arrival first: the event's fields, ``ended_at``,
        ``reason`` and ``received_at`` (ISO-8601)."""
        out = []
        for received_us, reason, blob in self._read(
                "SELECT received_us, reason, event FROM quarantine ORDER BY received_us, "
                "event_id LIMIT ?", (limit,)):
            row = _DECODE_ROW(blob)
            item: dict[str, Any] = dict(zip(_FIELDS, row, strict=False))
            item["ended_at"] = from_us(row[13]).isoformat().replace("+00:00", "Z")
            item.update(reason=reason,
                        received_at=from_us(received_us).isoformat().replace("+00:00", "Z"))
            out.append(item)
        return out

    def quarantine_count(self) -> int:
        """How many events are quarantined."""
        return int(self._read("SELECT COUNT(*) FROM quarantine")[0][0])

    def release_quarantined(self, event_ids: Iterable[str] | None = None) -> Any:
        """Bill quarantined events (all, or these ids) as they are, and drop them from
        the quarantine; returns the IngestResult of billing them."""
        if event_ids is None:
            found = self._read("SELECT event_id, event FROM quarantine ORDER BY event_id")
        else:
            found = []
            for chunk in chunks([id_bytes(i) for i in event_ids], 900):
                marks = ",".join("?" * len(chunk))
                found += self._read(
                    f"SELECT event_id, event FROM quarantine WHERE event_id IN ({marks})",
                    chunk)
        rows = [_DECODE_ROW(blob) for _, blob in found]
        result = self._ingest_rows(rows, [k for k, _ in found], None, now=None)
        keys = [k for k, _ in found]

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM quarantine WHERE event_id = ?", [(k,) for k in keys])
        self._write(work)
        return result
