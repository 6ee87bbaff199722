"""Which event ids the ledger has stored: exact, for idempotent ingestion, and cheap to add to.

Event ids are uuid5 hashes (the usage contract), so a B-tree keyed by them takes every
new id at a random place: once the index is larger than a batch, each event dirties one
4 KiB page that the commit must append to the WAL, fsync and later checkpoint (at 1M
stored events that was half of the ingest time). So new ids go to ``recent_ids`` first, a
rowid table that is only appended to, and this process keeps them in a set; every
``merge_every`` ids they are moved into ``event_ids`` (the id B-tree) in one sorted
insert, inside an ingest transaction, which dirties each index page once for the whole
merge instead of once per event.

A batch's ids are stored when they are in ``event_ids`` (looked up, a read) or in
``recent_ids`` (the set). Exact under SQLite's write lock: every check runs inside
``BEGIN IMMEDIATE``, and when another connection committed since this one last looked
(``PRAGMA data_version``) the set is read again from ``recent_ids``. The set only learns
a transaction's ids after it committed (:meth:`StoredIds.committed`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from deepserve.operator.metering.base import chunks

#: Ids kept in ``recent_ids`` (and in memory, ≈ 100 bytes each) before a merge.
MERGE_EVERY = 200_000


class StoredIds:
    """The stored event ids of one ledger connection (used under the ledger's lock)."""

    def __init__(self, merge_every: int = MERGE_EVERY) -> None:
        self.merge_every = merge_every
        self._recent: set[bytes] = set()
        self._seen_version: int | None = None
        self._pending: Sequence[bytes] = ()
        self._merging = False

    def _sync(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._seen_version:  # first use, or another connection wrote
            self._recent = {k for (k,) in conn.execute("SELECT event_id FROM recent_ids")}
            self._seen_version = version

    def stored(self, conn: sqlite3.Connection, keys: Sequence[bytes]) -> set[bytes]:
        """Inside a write transaction: which of these 16-byte id keys are stored."""
        self._sync(conn)
        recent = self._recent
        found = {k for k in keys if k in recent}
        for chunk in chunks(list(keys), 900):
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in conn.execute(
                f"SELECT event_id FROM event_ids WHERE event_id IN ({marks})", chunk))
        return found

    def add(self, conn: sqlite3.Connection, keys: Sequence[bytes]) -> None:
        """Inside the write transaction that stores their events: record new id keys
        (not stored, no repeats: the caller checked with :meth:`stored`)."""
        conn.executemany("INSERT INTO recent_ids (event_id) VALUES (?)", [(k,) for k in keys])
        self._pending = keys
        self._merging = len(self._recent) + len(keys) >= self.merge_every
        if self._merging:  # event_ids' primary key would refuse an id stored twice
            conn.execute("INSERT INTO event_ids SELECT event_id FROM recent_ids "
                         "ORDER BY event_id")
            conn.execute("DELETE FROM recent_ids")

    def committed(self) -> None:
        """The transaction of the last :meth:`add` committed."""
        if self._merging:
            self._recent = set()
        else:
            self._recent.update(self._pending)
        self.rolled_back()

    def rolled_back(self) -> None:
        """The transaction of the last :meth:`add` (if any) was rolled back."""
        self._pending, self._merging = (), False
