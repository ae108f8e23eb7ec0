"""Retention: records older than their limit (``retention:``) leave the store, in small batches, off the event loop.

What goes, and only when it is older than its kind's limit:

* a resolved alert whose last change is older than ``alerts_days``, with its audit trail; an open alert never goes,
  however old (someone still has to act on it);
* a closed incident whose last change is older than ``alerts_days`` and that has no alert left, with its events
  and its paging marks;
* the local copy of readings (``gateway_readings``) older than ``readings_days``;
* lines InfluxDB refused, older than ``dead_letters_days``;
* the change log (``change_log``, what ``firegrid console`` follows) older than :data:`CHANGE_LOG_DAYS`: a feed for
  consoles that are at most seconds behind, not the record (that is the alerts, incidents and their audit).

Each batch (``batch_rows``) is one short transaction on this module's own connection, so the gateway's group
commit waits at most one batch behind it (SQLite's busy timeout), and the event loop never waits at all
(:meth:`Retention.run` sweeps in a worker thread).  Delivered notifications are pruned by the notifier
(``notify.retry.keep_done_s``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.db import Connection, dialect_of, open_database
from gateway.config import RetentionConfig

log = logging.getLogger("firegrid.retention")

DAY_MS = 86_400_000
CHANGE_LOG_DAYS = 1


@dataclass(frozen=True, slots=True)
class Swept:
    """How many rows of each kind one sweep removed."""

    alerts: int = 0
    audit: int = 0
    incidents: int = 0
    incident_events: int = 0
    readings: int = 0
    dead_letters: int = 0
    change_log: int = 0
    batches: int = 0
    cutoffs: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return (
            self.alerts
            + self.audit
            + self.incidents
            + self.incident_events
            + self.readings
            + self.dead_letters
            + self.change_log
        )


class Retention:
    """Thread-safe by its lock; :meth:`sweep` is synchronous (tests and the CLI call it directly)."""

    def __init__(self, path: str | Path, *, config: RetentionConfig, url: str | None = None) -> None:
        """``path``: the SQLite store.  ``url``: the PostgreSQL store of cluster mode, which then holds everything
        swept here but the dead letters (this machine's own, in the file at ``path``)."""
        self.config = config
        self._db: Connection = open_database(url) if url else open_database(Path(path))
        self._local: Connection = open_database(Path(path)) if url else self._db
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._local is not self._db:
                self._local.close()

    def _cutoff(self, days: int, now_ms: int) -> int | None:
        return None if days <= 0 else now_ms - days * DAY_MS

    def sweep(self, *, now_ms: int, pause: Callable[[], None] | None = None) -> Swept:
        """Remove everything older than its limit at ``now_ms``; ``pause()`` runs between batches (a real sweep
        yields the database to the gateway there)."""
        counts = dict.fromkeys(
            ("alerts", "audit", "incidents", "incident_events", "readings", "dead_letters", "change_log"), 0
        )
        batches = 0
        cutoffs: dict[str, int] = {}
        alerts_cutoff = self._cutoff(self.config.alerts_days, now_ms)
        readings_cutoff = self._cutoff(self.config.readings_days, now_ms)
        dead_cutoff = self._cutoff(self.config.dead_letters_days, now_ms)
        jobs: list[tuple[Connection, int, Callable[[Connection, int, int], dict[str, int]]]] = []
        if alerts_cutoff is not None:
            cutoffs["alerts"] = alerts_cutoff
            jobs += [(self._db, alerts_cutoff, _alerts_batch), (self._db, alerts_cutoff, _incidents_batch)]
        if readings_cutoff is not None:
            cutoffs["readings"] = readings_cutoff
            jobs.append((self._db, readings_cutoff, _simple("gateway_readings", "readings")))
        if dead_cutoff is not None:
            cutoffs["dead_letters"] = dead_cutoff
            jobs.append((self._local, dead_cutoff, _simple("gateway_influx_dead_letters", "dead_letters")))
        change_cutoff = now_ms - CHANGE_LOG_DAYS * DAY_MS
        cutoffs["change_log"] = change_cutoff
        jobs.append((self._db, change_cutoff, _simple("change_log", "change_log")))
        limit = self.config.batch_rows
        for db, cutoff, batch in jobs:
            while True:
                with self._lock:
                    # SQLite: take the write lock at once (no upgrade deadlock with the gateway's commit).
                    # PostgreSQL: a plain transaction (the deletes lock their own rows).
                    db.execute("BEGIN IMMEDIATE" if dialect_of(db) == "sqlite" else "BEGIN")
                    try:
                        removed = batch(db, cutoff, limit)
                        db.execute("COMMIT")
                    except BaseException:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise
                batches += 1
                for key, n in removed.items():
                    counts[key] += n
                if pause is not None:
                    pause()
                if max(removed.values(), default=0) < limit:
                    break
        return Swept(**counts, batches=batches, cutoffs=cutoffs)

    async def run(
        self, *, clock_ms: Callable[[], int] | None = None, on_swept: Callable[[Swept], None] | None = None
    ) -> None:
        """Sweep now and every ``interval_s``, in a worker thread; a failed sweep is logged and tried again.
        ``on_swept(result)`` after each sweep, on the event loop."""
        now = clock_ms or (lambda: time.time_ns() // 1_000_000)
        while True:
            try:
                swept = await asyncio.to_thread(self.sweep, now_ms=now(), pause=lambda: time.sleep(0.01))
                if on_swept is not None:
                    on_swept(swept)
                if swept.total:
                    log.info(
                        "retention removed %d alerts (%d audit entries), %d incidents (%d events), %d readings,"
                        " %d dead letters, %d change-log rows in %d batches",
                        swept.alerts,
                        swept.audit,
                        swept.incidents,
                        swept.incident_events,
                        swept.readings,
                        swept.dead_letters,
                        swept.change_log,
                        swept.batches,
                    )
            except Exception:  # a failed sweep must never stop the gateway: it is tried again next time
                log.exception("retention sweep failed; trying again in %.0f s", self.config.interval_s)
            await asyncio.sleep(self.config.interval_s)


def _ids(db: Connection, sql: str, cutoff: int, limit: int) -> list[int]:
    return [int(r[0]) for r in db.execute(sql, (cutoff, limit))]


def _in(ids: list[int]) -> str:
    return f"({','.join('?' * len(ids))})"


def _alerts_batch(db: Connection, cutoff: int, limit: int) -> dict[str, int]:
    ids = _ids(db, "SELECT id FROM alerts WHERE open = 0 AND updated_ms < ? ORDER BY id LIMIT ?", cutoff, limit)
    if not ids:
        return {"alerts": 0}
    audit = db.execute(f"DELETE FROM audit WHERE alert_id IN {_in(ids)}", ids).rowcount
    alerts = db.execute(f"DELETE FROM alerts WHERE id IN {_in(ids)}", ids).rowcount
    return {"alerts": alerts, "audit": audit}


def _incidents_batch(db: Connection, cutoff: int, limit: int) -> dict[str, int]:
    ids = _ids(
        db,
        "SELECT id FROM incidents i WHERE closed_ms IS NOT NULL AND updated_ms < ?"
        " AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.incident_id = i.id) ORDER BY id LIMIT ?",
        cutoff,
        limit,
    )
    if not ids:
        return {"incidents": 0}
    events = db.execute(f"DELETE FROM incident_events WHERE incident_id IN {_in(ids)}", ids).rowcount
    db.execute(f"DELETE FROM pages WHERE incident_id IN {_in(ids)}", ids)
    incidents = db.execute(f"DELETE FROM incidents WHERE id IN {_in(ids)}", ids).rowcount
    return {"incidents": incidents, "incident_events": events}


def _simple(table: str, key: str) -> Callable[[Connection, int, int], dict[str, int]]:
    # The table name is one of the constants above, never input.
    def batch(db: Connection, cutoff: int, limit: int) -> dict[str, int]:
        n = db.execute(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE ts_ms < ? ORDER BY id LIMIT ?)",
            (cutoff, limit),
        ).rowcount
        return {key: n}

    return batch
