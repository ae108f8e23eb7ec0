"""What the store's parts share: one connection behind one lock, the notify config, the buildings' names and the
listeners; the ``BEGIN IMMEDIATE`` transaction every write runs in; and the row -> record readers.

The outbox hand-off: a transaction that added outbox rows hands them, as read inside it, to the outbox listeners
(the notifier) right after its ``COMMIT`` succeeded, so the notifier need not find them with a query of its own.  A
transaction that rolled back (or whose ``COMMIT`` failed) hands nothing.  The database stays the record: a row the
notifier could not start at once, or that no listener heard of (none was registered, or it was written by another
connection), is found by its next round as before.

The change log: every change the listeners will hear of (:meth:`Core.note_change`, from ``events._emit``) is also
written to ``change_log`` just before that ``COMMIT``, in the same transaction, rendered as the live stream sends it
(:attr:`Core.change_renderer`, set by the HTTP API): a process that only reads the store (``firegrid console``) sees
exactly the committed changes, in commit order on SQLite."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from alerts.config import NotifyConfig
from alerts.dispatch import DispatchPlan
from alerts.records import ALERT_COLUMNS, AlertChange, AlertRecord, IncidentFacts, IncidentRecord, OutboxItem

log = logging.getLogger(__name__)

# At most this many of a transaction's new outbox rows are handed over, highest priority (fire) first: the notifier
# has far fewer workers than that, and reading a storm's thousands of rows would lengthen the commit for nothing
# (the notifier's next round picks the rest from the database, in the same priority order).
HANDOFF_LIMIT = 64

# An alert joined with its incident's SMS reply code: what AlertRecord reads.
ALERT_FROM = "FROM alerts a JOIN incidents i ON i.id = a.incident_id"
ALERT_WITH_CODE = f"SELECT {ALERT_COLUMNS} {ALERT_FROM}"

# A change as the live stream sends it: (event type, JSON object), or None for one it does not show.
ChangeRenderer = Callable[[AlertChange], "tuple[str, Mapping[str, Any]] | None"]


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
        self.outbox_listeners: list[Callable[[Sequence[OutboxItem]], None]] = []
        self._outbox_seen = 0  # the highest outbox id handed over (or there before the first listener came)
        # The change log (module docstring): the open transaction's changes, and how to render them.
        self.change_renderer: ChangeRenderer | None = None
        self._changes: list[AlertChange] = []

    def tx(self) -> Tx:
        return Tx(self)

    def add_outbox_listener(self, callback: Callable[[Sequence[OutboxItem]], None]) -> None:
        with self.lock:
            if not self.outbox_listeners:
                # Rows already there are the listener's own to find (its first round reads the outbox).
                self._outbox_seen = int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0])
            self.outbox_listeners.append(callback)

    def remove_outbox_listener(self, callback: Callable[[Sequence[OutboxItem]], None]) -> None:
        with self.lock:
            if callback in self.outbox_listeners:
                self.outbox_listeners.remove(callback)

    def fresh_outbox(self, cur: sqlite3.Cursor) -> tuple[list[OutboxItem], int]:
        """Inside a write transaction: the pending outbox rows added since the last hand-off (fire first, at most
        :data:`HANDOFF_LIMIT`), and the highest outbox id now.  Reads only the new rows (by primary key); a
        transaction that added none reads one index entry."""
        top = int(cur.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0])
        if top <= self._outbox_seen:
            return [], top
        # NOT INDEXED: walk the rowid range of the new rows only; the planner would otherwise take the pending-rows
        # index and read the whole backlog (a receiver down for an hour) on every commit.  The bodies are read for
        # the chosen few only.
        rows = cur.execute(
            "SELECT * FROM outbox WHERE id IN (SELECT id FROM outbox NOT INDEXED WHERE id > ? AND state = 'pending'"
            " ORDER BY priority DESC, id LIMIT ?) ORDER BY priority DESC, id",
            (self._outbox_seen, HANDOFF_LIMIT),
        ).fetchall()
        return [OutboxItem.from_row(r) for r in rows], top

    def hand_off(self, items: Sequence[OutboxItem], top: int) -> None:
        """After the ``COMMIT`` that made ``items`` durable (under the lock, so hand-offs keep the commits' order)."""
        self._outbox_seen = max(self._outbox_seen, top)
        if not items:
            return
        for callback in list(self.outbox_listeners):
            try:
                callback(items)
            except Exception:  # a broken listener must not break the store (the rows are durable: a round finds them)
                log.exception("outbox listener failed")

    def note_change(self, change: AlertChange) -> None:
        """Inside a write transaction: ``change`` goes to the change log when the transaction commits."""
        self._changes.append(change)

    def log_changes(self, cur: sqlite3.Cursor) -> None:
        """Inside the write transaction, just before its ``COMMIT``: the noted changes as ``change_log`` rows.
        (On PostgreSQL the same transaction also runs ``NOTIFY firegrid_changes``, delivered on commit.)"""
        changes, self._changes = self._changes, []
        if changes:
            cur.executemany(
                "INSERT INTO change_log (ts_ms, kind, building, alert_id, incident_id, data) VALUES (?,?,?,?,?,?)",
                [self._change_row(change) for change in changes],
            )

    def drop_changes(self) -> None:
        self._changes = []

    def _change_row(self, change: AlertChange) -> tuple[int, str, str | None, int | None, int | None, str]:
        rendered = None
        if self.change_renderer is not None:
            try:
                rendered = self.change_renderer(change)
            except Exception:  # a rendering bug must not stop an alert's write: the reader renders it from the store
                log.exception("could not render a change for the change log")
        if rendered is None:
            # No renderer (a process without the HTTP API): the ids and the change's name; the reader renders the
            # record from the store.
            kind = "incident" if change.type.startswith("incident.") else "alert"
            rendered = (kind, {"change": change.type, "ts_ms": change.ts_ms, "building": change.data.get("building")})
        kind, data = rendered
        building = data.get("building")
        return (
            change.ts_ms,
            kind,
            building if isinstance(building, str) else None,
            change.alert_id,
            change.incident_id,
            to_json(data),
        )

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
                try:
                    self.core.log_changes(self.cur)  # in this transaction: committed with the change, or not at all
                except BaseException:
                    self.cur.execute("ROLLBACK")
                    raise
                fresh = None
                if self.core.outbox_listeners:
                    try:
                        fresh = self.core.fresh_outbox(self.cur)
                    except sqlite3.Error:  # the hand-off is a shortcut: the commit must not fail for it
                        log.exception("reading the new outbox rows failed; the notifier's round finds them")
                self.cur.execute("COMMIT")
                # Only now, committed, may the notifier hear of them; a rollback or a failed COMMIT hands nothing.
                if fresh is not None:
                    self.core.hand_off(*fresh)
            else:
                self.core.drop_changes()
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
