"""GPU-time and scraped-counter accounting of the ledger (mixed into UsageLedger)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from deepserve.operator.metering.base import HOUR_US, check_window, chunks, from_us, to_us
from deepserve.operator.metering.gputime import (
    GpuInterval,
    PodSnapshot,
    gpu_intervals,
    split_by_hour,
)
from deepserve.operator.metering.scrape import MetricsSample, sample_deltas


@dataclasses.dataclass(frozen=True)
class GpuRow:
    """GPU-seconds of one account/model/version/pool within [start, end) (one hour at most)."""

    start: datetime
    end: datetime
    account: str
    namespace: str
    model: str
    version: str
    pool: str
    gpu_seconds: float


class ResourceAccounting:
    """Ledger methods for GPU time (pod snapshots) and Triton counter deltas."""

    def _write(self, work: Any) -> Any:
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def observe_pods(self, snapshots: Iterable[PodSnapshot],
                     deleted: Iterable[str] = ()) -> list[GpuInterval]:
        """Account GPU time for new pod observations (one transaction, idempotent).

        ``deleted`` lists pod uids whose snapshot in this call is their last (final
        observation when the pod terminates); their state is then dropped.
        Returns the intervals newly billed.
        """
        snaps = list(snapshots)
        gone = set(deleted)

        def work(conn: sqlite3.Connection) -> list[GpuInterval]:
            uids = sorted({s.uid for s in snaps})
            previous: dict[str, PodSnapshot] = {}
            for chunk in chunks(uids, 900):
                marks = ",".join("?" * len(chunk))
                for uid, text in conn.execute(
                        f"SELECT pod_uid, snapshot FROM pod_state WHERE pod_uid IN ({marks})",
                        chunk):
                    previous[uid] = PodSnapshot.from_json_dict(json.loads(text))
            fresh: list[GpuInterval] = []
            for iv in gpu_intervals(snaps, previous):
                cur = conn.execute("INSERT OR IGNORE INTO gpu_intervals VALUES "
                                   "(?,?,?,?,?,?,?,?,?,?,?)",
                                   (iv.interval_id, iv.pod_uid, iv.pod, iv.namespace, iv.model,
                                    iv.version, iv.account, iv.pool, iv.gpus,
                                    to_us(iv.start), to_us(iv.end)))
                if cur.rowcount != 1:
                    continue
                fresh.append(iv)
                for hour, seconds in split_by_hour(iv.start, iv.end):
                    conn.execute(
                        "INSERT INTO gpu_hourly VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE "
                        "SET gpu_seconds = gpu_seconds + excluded.gpu_seconds",
                        (to_us(hour), iv.account, iv.namespace, iv.model, iv.version, iv.pool,
                         seconds * iv.gpus))
            latest: dict[str, PodSnapshot] = {}
            for s in snaps:
                if s.uid not in latest or s.observed_at > latest[s.uid].observed_at:
                    latest[s.uid] = s
            for uid, s in latest.items():
                if uid in gone:
                    conn.execute("DELETE FROM pod_state WHERE pod_uid = ?", (uid,))
                elif uid not in previous or s.observed_at > previous[uid].observed_at:
                    conn.execute("INSERT OR REPLACE INTO pod_state VALUES (?, ?)",
                                 (uid, json.dumps(s.to_json_dict(), sort_keys=True)))
            return fresh

        return self._write(work)

    def gpu_rows(self, start: datetime, end: datetime, account: str | None = None) -> list[GpuRow]:
        """GPU-seconds per hour/account/model/version/pool in the window, clipped at edges."""
        check_window(start, end)
        s_us, e_us = to_us(start), to_us(end)
        acct = " AND account = ?" if account else ""
        extra: list[Any] = [account] if account else []
        key_cols = "account, namespace, model, version, pool"
        if s_us % HOUR_US == 0 and e_us % HOUR_US == 0:
            rows = self._read(f"SELECT hour_us, {key_cols}, gpu_seconds FROM gpu_hourly "
                              f"WHERE hour_us >= ? AND hour_us < ?{acct} "
                              f"ORDER BY hour_us, {key_cols}", [s_us, e_us, *extra])
            return [GpuRow(from_us(r[0]), from_us(r[0] + HOUR_US), *r[1:]) for r in rows]
        sums: dict[tuple[Any, ...], float] = {}
        for r in self._read(f"SELECT {key_cols}, gpus, start_us, end_us FROM gpu_intervals "
                            f"WHERE end_us > ? AND start_us < ?{acct}", [s_us, e_us, *extra]):
            lo, hi = from_us(max(r[6], s_us)), from_us(min(r[7], e_us))
            for hour, seconds in split_by_hour(lo, hi):
                key = (to_us(hour), *r[:5])
                sums[key] = sums.get(key, 0.0) + seconds * r[5]
        return [GpuRow(max(start, from_us(k[0])), min(end, from_us(k[0] + HOUR_US)),
                       account=k[1], namespace=k[2], model=k[3], version=k[4], pool=k[5],
                       gpu_seconds=v)
                for k, v in sorted(sums.items())]

    def gpu_intervals_in(self, start: datetime, end: datetime, account: str | None = None
                         ) -> list[dict[str, Any]]:
        """GPU intervals ending in [start, end), ordered by (end, id), as dicts."""
        check_window(start, end)
        acct = " AND account = ?" if account else ""
        cols = ("interval_id", "pod_uid", "pod", "namespace", "model", "version", "account",
                "pool", "gpus", "start_us", "end_us")
        rows = self._read(f"SELECT {', '.join(cols)} FROM gpu_intervals WHERE end_us >= ? AND "
                          f"end_us < ?{acct} ORDER BY end_us, interval_id",
                          [to_us(start), to_us(end)] + ([account] if account else []))
        out = [dict(zip(cols, r, strict=True)) for r in rows]
        for d in out:
            d["gpu_seconds"] = d["gpus"] * (d["end_us"] - d["start_us"]) / 1e6
        return out

    # -- scraped counters ---------------------------------------------------------
    def record_scrape(self, pod_uid: str, namespace: str, model: str, version: str,
                      sample: MetricsSample, at: datetime, *, final: bool = False
                      ) -> dict[str, float]:
        """Store counter increases since the pod's previous scrape (resets handled), bucketed
        in the hour of ``at``. ``final=True`` (pod terminating) drops the pod's state.
        Returns the deltas per metric."""
        hour_us = to_us(at) - to_us(at) % HOUR_US

        def work(conn: sqlite3.Connection) -> dict[str, float]:
            previous = dict(conn.execute(
                "SELECT series, value FROM counter_state WHERE pod_uid = ?", (pod_uid,)))
            deltas, state = sample_deltas(previous, sample)
            conn.executemany(
                "INSERT INTO counter_hourly VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE "
                "SET value = value + excluded.value",
                [(hour_us, namespace, model, version, m, v) for m, v in sorted(deltas.items())])
            conn.execute("DELETE FROM counter_state WHERE pod_uid = ?", (pod_uid,))
            if not final:
                conn.executemany("INSERT INTO counter_state VALUES (?,?,?)",
                                 [(pod_uid, sid, v) for sid, v in sorted(state.items())])
            return deltas

        return self._write(work)

    def counter_totals(self, start: datetime, end: datetime
                       ) -> dict[tuple[str, str, str], dict[str, float]]:
        """Scraped counter increases per (namespace, model, version) over the hours that
        overlap the window."""
        check_window(start, end)
        s_us = to_us(start) - to_us(start) % HOUR_US
        out: dict[tuple[str, str, str], dict[str, float]] = {}
        for ns, model, ver, metric, value in self._read(
                "SELECT namespace, model, version, metric, SUM(value) FROM counter_hourly "
                "WHERE hour_us >= ? AND hour_us < ? GROUP BY 1, 2, 3, 4", [s_us, to_us(end)]):
            out.setdefault((ns, model, ver), {})[metric] = value
        return out
