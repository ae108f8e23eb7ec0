"""What the store's parts share: one connection behind one lock, the notify config, the buildings' names and the
listeners; the transaction every write runs in (:class:`Tx`, with its cursor :class:`TxCursor`); and the
row -> record readers.

The write transaction: ``BEGIN IMMEDIATE`` on SQLite, where it makes every write transaction of the file run alone.
On PostgreSQL a plain ``BEGIN`` (read committed): several gateways and console instances write at once, and what
the SQLite lock gave for free is kept by the statements themselves: a row that a transaction reads to decide what
to write is read ``FOR UPDATE`` (:attr:`TxCursor.for_update`, empty on SQLite), a claim is one ``UPDATE ...
RETURNING``, and a uniqueness (one open alert per key, one open incident per SMS reply code) is a unique index.

The fence (:meth:`Core.set_fence`): a check called inside every write transaction right after it began; if it
raises, the transaction rolls back and the exception propagates (cluster mode's leases use it to refuse the
writes of a gateway that no longer owns its buildings).

The outbox hand-off: a transaction that added outbox rows hands them, as read inside it, to the outbox listeners
(the notifier) right after its ``COMMIT`` succeeded, so the notifier need not find them with a query of its own.  A
transaction that rolled back (or whose ``COMMIT`` failed) hands nothing.  The rows handed over are the ones the
transaction itself inserted (their ids come back from ``INSERT ... RETURNING``): not "every id above the last one
seen", which on PostgreSQL would skip the rows of a concurrent transaction that took lower ids and committed later.
The database stays the record: a row the notifier could not start at once, or that no listener heard of (none was
registered, or it was written by another connection), is found by its next round as before.

The change log: every change the listeners will hear of (:meth:`Core.note_change`, from ``events._emit``) is also
written to ``change_log`` just before that ``COMMIT``, in the same transaction, rendered as the live stream sends it
(:attr:`Core.change_renderer`, set by the HTTP API): a process that only reads the store (``firegrid console``) sees
exactly the committed changes, in commit order on SQLite."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import orjson

from alerts.config import NotifyConfig
from alerts.dispatch import DispatchPlan
from alerts.records import ALERT_COLUMNS, AlertChange, AlertRecord, IncidentFacts, IncidentRecord, OutboxItem
from common.db import DATABASE_ERRORS, Connection, Cursor, Row, dialect_of

Fence = Callable[[Cursor], None]

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


def building_scope(buildings: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (`` AND building IN (...)``) and its parameters that keep a query to ``buildings``: a
    cluster gateway's share of the store.  None: no condition (every building); empty: nothing at all."""
    if buildings is None:
        return "", ()
    wanted = tuple(buildings)
    if not wanted:
        return " AND 1 = 0", ()
    return f" AND building IN ({','.join('?' * len(wanted))})", wanted


class Core:
    """Thread-safe by its lock: the gateway calls ``apply`` from its commit thread while the notifier and the API
    use the event loop (through worker threads)."""

    def __init__(
        self,
        db: Connection,
        *,
        notify: NotifyConfig,
        building_names: dict[str, str],
        plan: DispatchPlan | None = None,
    ) -> None:
        self.db = db
        self.dialect = dialect_of(db)
        self.fence: Fence | None = None
        self.lock = threading.RLock()
        self.notify = notify
        self.building_names = building_names
        self.plan = plan or DispatchPlan()
        self.listeners: list[Callable[[AlertChange], None]] = []
        self.outbox_listeners: list[Callable[[Sequence[OutboxItem]], None]] = []
        # The change log (module docstring): the open transaction's changes, and how to render them.
        self.change_renderer: ChangeRenderer | None = None
        self._changes: list[AlertChange] = []

    def tx(self) -> Tx:
        return Tx(self)

    def set_fence(self, check: Fence | None) -> None:
        """``check(cur)`` inside every write transaction, right after it began (None: no check).  If it raises, the
        transaction rolls back (nothing of it is written, no outbox row is handed over) and the exception reaches
        the caller."""
        with self.lock:
            self.fence = check

    def add_outbox_listener(self, callback: Callable[[Sequence[OutboxItem]], None]) -> None:
        with self.lock:
            self.outbox_listeners.append(callback)

    def remove_outbox_listener(self, callback: Callable[[Sequence[OutboxItem]], None]) -> None:
        with self.lock:
            if callback in self.outbox_listeners:
                self.outbox_listeners.remove(callback)

    def fresh_outbox(self, cur: TxCursor) -> list[OutboxItem]:
        """Inside a write transaction: the outbox rows it inserted that are still pending, fire first, at most
        :data:`HANDOFF_LIMIT`.  Reads those rows only, by primary key; a transaction that added none reads nothing."""
        if not cur.added:
            return []
        # Candidates by the priority they were inserted with (a later coalesce may raise it: take some spare).
        best = sorted(cur.added, key=lambda p: (-p[0], p[1]))[: 2 * HANDOFF_LIMIT]
        ids = [item_id for _, item_id in best]
        rows = cur.execute(
            f"SELECT * FROM outbox WHERE id IN ({','.join('?' * len(ids))}) AND state = 'pending'"
            " ORDER BY priority DESC, id LIMIT ?",
            (*ids, HANDOFF_LIMIT),
        ).fetchall()
        return [OutboxItem.from_row(r) for r in rows]

    def hand_off(self, items: Sequence[OutboxItem]) -> None:
        """After the ``COMMIT`` that made ``items`` durable (under the lock, so hand-offs keep the commits' order)."""
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

    def log_changes(self, cur: Cursor) -> None:
        """Inside the write transaction, just before its ``COMMIT``: the noted changes as ``change_log`` rows.  On
        PostgreSQL the same transaction also runs ``NOTIFY firegrid_changes``, which the server delivers only when
        (and if) the transaction commits: the consoles' wake-up (``gateway.service.console_feed``)."""
        changes, self._changes = self._changes, []
        if changes:
            cur.executemany(
                "INSERT INTO change_log (ts_ms, kind, building, alert_id, incident_id, data) VALUES (?,?,?,?,?,?)",
                [self._change_row(change) for change in changes],
            )
            if self.dialect == "postgres":
                cur.execute("NOTIFY firegrid_changes")

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

    def alert_record(self, row: Row) -> AlertRecord:
        """``row``: an ``alerts`` row joined with its incident's ``code`` (:data:`ALERT_WITH_CODE`)."""
        return AlertRecord.from_row(row, building_name=self.building_name(row[6]))

    def incident_record(
        self, row: Row, alert_ids: tuple[int, ...] = (), facts: IncidentFacts | None = None
    ) -> IncidentRecord:
        return IncidentRecord.from_row(
            row, building_name=self.building_name(row["building"]), alert_ids=alert_ids, facts=facts
        )


class TxCursor:
    """The cursor of one write transaction: the connection's cursor, plus what the transaction's writers need to
    know of it: the backend's row-lock clause (:attr:`for_update`) and the outbox rows it inserted (for the
    hand-off)."""

    def __init__(self, cur: Cursor, *, for_update: str) -> None:
        self._cur = cur
        self.for_update = for_update
        self.added: list[tuple[int, int]] = []  # (priority, id) of each outbox row inserted

    @property
    def inner(self) -> Cursor:
        """The connection's own cursor (the fence runs on it: cluster mode's lease check needs the backend's)."""
        return self._cur

    def outbox_added(self, item_id: int, priority: int) -> None:
        self.added.append((priority, item_id))

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> TxCursor:
        self._cur.execute(sql, parameters)
        return self

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> TxCursor:
        self._cur.executemany(sql, seq_of_parameters)
        return self

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def close(self) -> None:
        self._cur.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)


class Tx:
    """``with core.tx() as cur``: one write transaction under the store lock (``BEGIN IMMEDIATE`` on SQLite, a
    plain ``BEGIN`` on PostgreSQL), fenced, committed on success."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def __enter__(self) -> TxCursor:
        core = self.core
        core.lock.acquire()
        try:
            postgres = core.dialect == "postgres"
            self.cur = TxCursor(core.db.cursor(), for_update=" FOR UPDATE" if postgres else "")
            self.cur.execute("BEGIN" if postgres else "BEGIN IMMEDIATE")
            if core.fence is not None:
                try:
                    core.fence(self.cur.inner)
                except BaseException:
                    self.cur.execute("ROLLBACK")
                    raise
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
                    except DATABASE_ERRORS:  # the hand-off is a shortcut: the commit must not fail for it
                        log.exception("reading the new outbox rows failed; the notifier's round finds them")
                        if self.core.dialect == "postgres":
                            raise  # a failed statement aborts a PostgreSQL transaction: COMMIT would roll back
                self.cur.execute("COMMIT")
                # Only now, committed, may the notifier hear of them; a rollback or a failed COMMIT hands nothing.
                if fresh is not None:
                    self.core.hand_off(fresh)
            else:
                self.core.drop_changes()
                self.cur.execute("ROLLBACK")
        finally:
            self.cur.close()
            self.core.lock.release()


def to_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def incident_facts(cur: Cursor | Connection, incident_id: int) -> IncidentFacts:
    """What an incident's alerts say about it, over the ``alerts_incident`` index (the floors in a query of their
    own: a portable spelling of SQLite's ``GROUP_CONCAT``)."""
    devices, confirmed = cur.execute(
        "SELECT COUNT(DISTINCT device), MAX(COALESCE(confirmed, 0)) FROM alerts WHERE incident_id = ?",
        (incident_id,),
    ).fetchone()
    floors = cur.execute(
        "SELECT DISTINCT floor FROM alerts WHERE incident_id = ? AND floor IS NOT NULL", (incident_id,)
    ).fetchall()
    return IncidentFacts(tuple(sorted(int(f[0]) for f in floors)), int(devices or 0), bool(confirmed))


def log_step(
    cur: Cursor,
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


def audit(cur: Cursor, alert_id: int, now_ms: int, action: str, by: str | None, detail: Any) -> None:
    cur.execute(
        "INSERT INTO audit (alert_id, ts_ms, action, by, detail) VALUES (?,?,?,?,?)",
        (alert_id, now_ms, action, by, to_json(detail)),
    )
