"""Versioned SQLite schema for the usage ledger.

Each migration is applied once, inside one transaction together with the bump of
``PRAGMA user_version``, so a crash mid-migration leaves the previous version intact.
Timestamps are stored as integer microseconds since the Unix epoch (UTC); hours as the
epoch microsecond of the hour's start.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
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
        statements = [s.strip() for s in MIGRATIONS[version - 1].split(";") if s.strip()]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
