"""What the store's parts share: one connection behind one lock, the notify config, the buildings' names and the
listeners; the ``BEGIN IMMEDIATE`` transaction every write runs in; and the row -> record readers."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from alerts.config import NotifyConfig
from alerts.dispatch import DispatchPlan
from alerts.records import ALERT_COLUMNS, AlertChange, AlertRecord, IncidentFacts, IncidentRecord

log = logging.getLogger(__name__)

# An alert joined with its incident's SMS reply code: what AlertRecord reads.
ALERT_FROM = "FROM alerts a JOIN incidents i ON i.id = a.incident_id"
ALERT_WITH_CODE = f"SELECT {ALERT_COLUMNS} {ALERT_FROM}"


class Core:
    """Thread-safe by its lock: the gateway calls ``apply`` from its commit thread while the notifier and the API
    use the event loop (through worker threads)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        notify: NotifyConfig,
        building_names: dict[str, str],
        plan: DispatchPlan | None = None,
    ) -> None:
        self.db = db
        self.lock = threading.RLock()
        self.notify = notify
        self.building_names = building_names
        self.plan = plan or DispatchPlan()
        self.listeners: list[Callable[[AlertChange], None]] = []

    def tx(self) -> Tx:
        return Tx(self)

    def publish(self, changes: Sequence[AlertChange]) -> None:
        for change in changes:
            for callback in list(self.listeners):
                try:
                    callback(change)
                except Exception:  # a broken listener must not break the store
                    log.exception("alert listener failed")

    def building_name(self, building: str) -> str:
        return self.building_names.get(building, building)

    def alert_record(self, row: sqlite3.Row) -> AlertRecord:
        """``row``: an ``alerts`` row joined with its incident's ``code`` (:data:`ALERT_WITH_CODE`)."""
        return AlertRecord.from_row(row, building_name=self.building_name(row[6]))

    def incident_record(
        self, row: sqlite3.Row, alert_ids: tuple[int, ...] = (), facts: IncidentFacts | None = None
    ) -> IncidentRecord:
        return IncidentRecord.from_row(
            row, building_name=self.building_name(row["building"]), alert_ids=alert_ids, facts=facts
        )


class Tx:
    """``with core.tx() as cur``: one IMMEDIATE transaction under the store lock, committed on success."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def __enter__(self) -> sqlite3.Cursor:
        self.core.lock.acquire()
        try:
            self.cur = self.core.db.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.core.lock.release()
            raise
        return self.cur

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.cur.execute("COMMIT")
            else:
                self.cur.execute("ROLLBACK")
        finally:
            self.cur.close()
            self.core.lock.release()


def to_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def incident_facts(cur: sqlite3.Cursor | sqlite3.Connection, incident_id: int) -> IncidentFacts:
    """What an incident's alerts say about it, in one aggregate over the ``alerts_incident`` index."""
    floors, devices, confirmed = cur.execute(
        "SELECT GROUP_CONCAT(DISTINCT floor), COUNT(DISTINCT device), MAX(COALESCE(confirmed, 0)) FROM alerts"
        " WHERE incident_id = ?",
        (incident_id,),
    ).fetchone()
    found = sorted({int(f) for f in str(floors).split(",") if f}) if floors is not None else []
    return IncidentFacts(tuple(found), int(devices or 0), bool(confirmed))


def log_step(
    cur: sqlite3.Cursor,
    incident_id: int,
    now_ms: int,
    action: str,
    *,
    actor: str | None,
    by_name: str | None = None,
    detail: Any = None,
) -> None:
    """One step on an incident's timeline (``incident_events``)."""
    cur.execute(
        "INSERT INTO incident_events (incident_id, ts_ms, action, actor, by_name, detail) VALUES (?,?,?,?,?,?)",
        (incident_id, now_ms, action, actor, by_name, None if detail is None else to_json(detail)),
    )


def audit(cur: sqlite3.Cursor, alert_id: int, now_ms: int, action: str, by: str | None, detail: Any) -> None:
    cur.execute(
        "INSERT INTO audit (alert_id, ts_ms, action, by, detail) VALUES (?,?,?,?,?)",
        (alert_id, now_ms, action, by, to_json(detail)),
    )
