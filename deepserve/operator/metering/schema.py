"""Versioned SQLite schema for the usage ledger.

Each migration is applied once, inside one transaction together with the bump of
``PRAGMA user_version``, so a crash mid-migration leaves the previous version intact.
Timestamps are stored as integer microseconds since the Unix epoch (UTC); hours as the
epoch microsecond of the hour's start. A migration is SQL text or, where data must be
re-encoded, a function of the connection (it runs inside the same transaction).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from deepserve.operator.metering.base import HOUR_US
from deepserve.operator.metering.event_store import (
    USAGE_UPSERT,
    chunk_rows,
    decode_chunk,
    hourly_rows,
)
from deepserve.operator.metering.wire import Row, id_bytes

log = logging.getLogger(__name__)

_EVENT_STORE = """
    CREATE TABLE event_chunks (
        chunk INTEGER PRIMARY KEY,
        hour_us INTEGER NOT NULL,
        first_end_us INTEGER NOT NULL, last_end_us INTEGER NOT NULL,
        count INTEGER NOT NULL, ingested_us INTEGER NOT NULL,
        events BLOB NOT NULL
    );
    CREATE INDEX event_chunks_by_time ON event_chunks (hour_us, first_end_us);
    CREATE TABLE event_ids (event_id BLOB PRIMARY KEY) WITHOUT ROWID
"""


def _to_event_store(conn: sqlite3.Connection) -> None:
    """2: one row per event (three B-trees each) -> chunks of events + an id index.

    Events keep their values and ingestion time; a chunk holds events of one hour that
    were ingested together, as schema 2's writer makes them.
    """
    for statement in _EVENT_STORE.split(";"):
        conn.execute(statement)
    conn.create_function("id_bytes", 1, id_bytes, deterministic=True)
    # Text ids sort as their bytes do, so the id index is filled in key order.
    conn.execute("INSERT INTO event_ids SELECT id_bytes(event_id) FROM events ORDER BY event_id")
    cursor = conn.execute(
        "SELECT event_id, namespace, model, version, account, tenant, request_id, "
        "prompt_tokens, generated_tokens, compute_ms, precision, status, started_us, "
        f"ended_us, queue_ms, ttft_ms, ingested_us FROM events ORDER BY ended_us - ended_us % "
        f"{HOUR_US}, ingested_us, ended_us, event_id")
    insert = ("INSERT INTO event_chunks (hour_us, first_end_us, last_end_us, count, "
              "ingested_us, events) VALUES (?,?,?,?,?,?)")
    group: list[Row] = []
    group_key: tuple[int, int] = (0, 0)  # (hour_us, ingested_us)
    moved = 0
    while rows := cursor.fetchmany(10_000):
        for *values, ingested_us in rows:
            key = (values[13] - values[13] % HOUR_US, ingested_us)
            if key != group_key and group:
                conn.executemany(insert, chunk_rows(group, group_key[1]))
                moved += len(group)
                group = []
            group_key = key
            group.append(tuple(values))  # type: ignore[arg-type]
    if group:
        conn.executemany(insert, chunk_rows(group, group_key[1]))
        moved += len(group)
    conn.execute("DROP TABLE events")
    log.info("usage ledger: moved %d events into the chunked event store", moved)


def _usage_by_tenant(conn: sqlite3.Connection) -> None:
    """3: hourly usage also per tenant (the caller, billed for its requests), rebuilt
    from the stored events, which always carried the tenant."""
    conn.execute("DROP TABLE usage_hourly")
    conn.execute("""
        CREATE TABLE usage_hourly (
            hour_us INTEGER NOT NULL, account TEXT NOT NULL, namespace TEXT NOT NULL,
            model TEXT NOT NULL, version TEXT NOT NULL, tenant TEXT NOT NULL,
            requests INTEGER NOT NULL, ok INTEGER NOT NULL, cancelled INTEGER NOT NULL,
            errors INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
            generated_tokens INTEGER NOT NULL, compute_ms REAL NOT NULL,
            PRIMARY KEY (hour_us, account, namespace, model, version, tenant)
        ) WITHOUT ROWID""")
    conn.execute("CREATE INDEX usage_hourly_by_tenant ON usage_hourly (tenant, hour_us)")
    cursor = conn.execute("SELECT events FROM event_chunks ORDER BY chunk")
    while blobs := cursor.fetchmany(256):
        conn.executemany(USAGE_UPSERT, hourly_rows(
            row for (blob,) in blobs for row in decode_chunk(blob)))


MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    # 1: events, hourly aggregates, GPU time, counters, prices
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        namespace TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
        account TEXT NOT NULL, tenant TEXT, request_id TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL CHECK (prompt_tokens >= 0),
        generated_tokens INTEGER NOT NULL CHECK (generated_tokens >= 0),
        compute_ms REAL NOT NULL CHECK (compute_ms >= 0),
        precision TEXT NOT NULL, status TEXT NOT NULL,
        started_us INTEGER NOT NULL, ended_us INTEGER NOT NULL,
        queue_ms REAL, ttft_ms REAL, ingested_us INTEGER NOT NULL
    );
    CREATE INDEX events_by_end ON events (ended_us);

    CREATE TABLE usage_hourly (
        hour_us INTEGER NOT NULL, account TEXT NOT NULL, namespace TEXT NOT NULL,
        model TEXT NOT NULL, version TEXT NOT NULL,
        requests INTEGER NOT NULL, ok INTEGER NOT NULL, cancelled INTEGER NOT NULL,
        errors INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
        generated_tokens INTEGER NOT NULL, compute_ms REAL NOT NULL,
        PRIMARY KEY (hour_us, account, namespace, model, version)
    ) WITHOUT ROWID;

    CREATE TABLE gpu_intervals (
        interval_id TEXT PRIMARY KEY, pod_uid TEXT NOT NULL, pod TEXT NOT NULL,
        namespace TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
        account TEXT NOT NULL, pool TEXT NOT NULL, gpus INTEGER NOT NULL,
        start_us INTEGER NOT NULL, end_us INTEGER NOT NULL CHECK (end_us >= start_us)
    ) WITHOUT ROWID;

    CREATE TABLE gpu_hourly (
        hour_us INTEGER NOT NULL, account TEXT NOT NULL, namespace TEXT NOT NULL,
        model TEXT NOT NULL, version TEXT NOT NULL, pool TEXT NOT NULL,
        gpu_seconds REAL NOT NULL,
        PRIMARY KEY (hour_us, account, namespace, model, version, pool)
    ) WITHOUT ROWID;

    CREATE TABLE pod_state (
        pod_uid TEXT PRIMARY KEY, snapshot TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE counter_state (
        pod_uid TEXT NOT NULL, series TEXT NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (pod_uid, series)
    ) WITHOUT ROWID;

    CREATE TABLE counter_hourly (
        hour_us INTEGER NOT NULL, namespace TEXT NOT NULL, model TEXT NOT NULL,
        version TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (hour_us, namespace, model, version, metric)
    ) WITHOUT ROWID;

    CREATE TABLE prices (
        effective_us INTEGER PRIMARY KEY, sheet TEXT NOT NULL
    );

    CREATE TABLE accounts (
        account TEXT PRIMARY KEY, name TEXT
    ) WITHOUT ROWID;
    """,
    # 2: events in chunks plus a 16-byte id index (event_store.py)
    _to_event_store,
    # 3: usage_hourly per tenant too
    _usage_by_tenant,
    # 4: the model registry and quarantined events (trust.py, quarantine.py)
    """
    CREATE TABLE owners (
        namespace TEXT NOT NULL, model TEXT NOT NULL, account TEXT NOT NULL,
        PRIMARY KEY (namespace, model)
    ) WITHOUT ROWID;
    CREATE TABLE quarantine (
        event_id BLOB PRIMARY KEY, received_us INTEGER NOT NULL, reason TEXT NOT NULL,
        event BLOB NOT NULL
    ) WITHOUT ROWID
    """,
    # 5: ids of recent events, appended, merged into event_ids in bulk (stored_ids.py)
    "CREATE TABLE recent_ids (seq INTEGER PRIMARY KEY, event_id BLOB NOT NULL)",
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; return the resulting schema version.

    Raises RuntimeError if the database was written by a newer deepserve (unknown version).
    """
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"ledger schema version {current} is newer than this deepserve ({SCHEMA_VERSION})"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        log.info("migrating usage ledger to schema version %d", version)
        step = MIGRATIONS[version - 1]
        conn.execute("BEGIN IMMEDIATE")
        try:
            if callable(step):
                step(conn)
            else:
                for statement in (s.strip() for s in step.split(";")):
                    if statement:
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
