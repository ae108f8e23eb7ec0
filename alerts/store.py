"""The durable alert store: alerts with their audit trail, incidents, and the notification outbox, in one SQLite
file (WAL, ``synchronous=FULL``).

Why one file and one transaction: an alert transition and the notifications it causes must be durable together.
``apply`` writes both in ONE transaction before the gateway acknowledges the MQTT messages that caused them, so a
crash either loses neither (the broker redelivers) or keeps both (the outbox resumes).  Nothing is sent from here:
``alerts.delivery.Notifier`` drains the outbox.

Lifecycle: ``raised`` -> ``acknowledged`` -> ``dispatched`` -> ``resolved`` (with a cause).  The condition clearing is
recorded (``condition = 'cleared'``) but never closes an alert: a fire that stopped being detected still needs someone
to look.  A re-triggered open alert (same ``key``) is updated, never duplicated.
"""

from __future__ import annotations

import secrets as _secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from alerts import routing
from alerts.config import NotifyConfig, WebhookConfig
from alerts.records import (
    CAUSES,
    OPEN_STATES,
    AlertDetail,
    AlertRecord,
    AuditEntry,
    IncidentRecord,
    OutboxItem,
    OutboxRecord,
    iso,
)
from rules.types import AlertTransition, Evidence, Severity

SEVERITY_ZH = {"fire": "火警", "supervisory": "监管告警", "trouble": "故障", "warning": "预警"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity INTEGER NOT NULL,
    building TEXT NOT NULL,
    floor INTEGER,
    device TEXT,
    grid TEXT,
    state TEXT NOT NULL,
    condition TEXT NOT NULL,
    open INTEGER NOT NULL DEFAULT 1,
    reason TEXT,
    value TEXT,
    confirmed INTEGER,
    flapping INTEGER NOT NULL DEFAULT 0,
    test INTEGER NOT NULL DEFAULT 0,
    drill INTEGER NOT NULL DEFAULT 0,
    incident_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    raised_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    cleared_ms INTEGER,
    acknowledged_ms INTEGER,
    acknowledged_by TEXT,
    dispatched_ms INTEGER,
    dispatched_to TEXT,
    resolved_ms INTEGER,
    resolved_by TEXT,
    cause TEXT,
    note TEXT,
    count INTEGER NOT NULL DEFAULT 1,
    tier INTEGER NOT NULL DEFAULT 0,
    escalate_at_ms INTEGER,
    evidence TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_key ON alerts(key) WHERE open = 1;
CREATE INDEX IF NOT EXISTS alerts_escalate ON alerts(escalate_at_ms) WHERE escalate_at_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS alerts_raised ON alerts(raised_ms);
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts(incident_id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    alert_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    by TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_alert ON audit(alert_id);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    building TEXT NOT NULL,
    grid TEXT,
    drill INTEGER NOT NULL DEFAULT 0,
    code TEXT NOT NULL,
    severity INTEGER NOT NULL,
    opened_ms INTEGER NOT NULL,
    last_alert_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    closed_ms INTEGER,
    alert_count INTEGER NOT NULL DEFAULT 0,
    open_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS incidents_building ON incidents(building, drill, last_alert_ms);
CREATE INDEX IF NOT EXISTS incidents_code ON incidents(code) WHERE closed_ms IS NULL;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    priority INTEGER NOT NULL,
    alert_id INTEGER,
    incident_id INTEGER,
    recipient TEXT,
    phone TEXT,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    attempt_ms INTEGER,
    done_ms INTEGER,
    last_error TEXT,
    dedup TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(channel, priority DESC, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_next ON outbox(channel, next_ms) WHERE state = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS outbox_dedup ON outbox(dedup) WHERE state = 'pending' AND dedup IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_sms ON outbox(phone, attempt_ms) WHERE channel = 'sms';
CREATE TABLE IF NOT EXISTS pages (
    incident_id INTEGER NOT NULL,
    phone TEXT NOT NULL,
    severity INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (incident_id, phone)
);
CREATE TABLE IF NOT EXISTS endpoints (
    target TEXT PRIMARY KEY,
    disabled_ms INTEGER NOT NULL,
    reason TEXT
);
"""


class AlertStoreError(Exception):
    """Base class of the store's errors."""


class AlertNotFound(AlertStoreError):
    def __init__(self, alert_id: int) -> None:
        super().__init__(f"no alert {alert_id}")
        self.alert_id = alert_id


class InvalidTransition(AlertStoreError):
    """The requested lifecycle step is not allowed from the alert's current state (e.g. acknowledging a resolved
    alert)."""

    def __init__(self, alert_id: int, state: str, action: str) -> None:
        super().__init__(f"alert {alert_id} is {state}: cannot {action}")
        self.alert_id = alert_id
        self.state = state
        self.action = action


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One thing that happened, as published to listeners and the SSE hub: ``type`` is the webhook event type
    (``alert.raised`` ... ``incident.resolved``), ``data`` the webhook ``data`` object, ``record`` the alert or
    incident it was rendered from (None for notices that are not a stored change)."""

    type: str
    alert_id: int | None
    incident_id: int | None
    ts_ms: int
    data: Mapping[str, Any] = field(default_factory=dict)
    record: AlertRecord | IncidentRecord | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt, recorded in batches: ``state`` ``pending`` means retry at ``next_ms``."""

    id: int
    state: str
    now_ms: int
    error: str | None = None
    next_ms: int | None = None
    attempted: bool = True


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _priority(severity: int, channel: str, *, news: bool = False) -> int:
    # Severity dominates (fire first, always).  Within a severity, news first: the first alert of a new incident
    # (and an escalation) overtakes the 199 followers of a smoky stairwell already reported.
    return severity * 10 + (5 if news else 0) + {"sms": 3, "governance": 2, "webhook": 1}.get(channel, 0)


def _matches(pattern: str, event: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event.startswith(pattern[:-1])
    return pattern == event


def _location(row: sqlite3.Row) -> str:
    floor = row["floor"]
    parts = []
    if floor is not None:
        parts.append(f"B{-floor}" if floor < 0 else f"{floor}F")
    if row["device"]:
        parts.append(str(row["device"]))
    return " ".join(parts)


class AlertStore:
    """See the module docstring.  Thread-safe (one connection behind a lock): the gateway may call ``apply`` from
    its commit thread while the notifier and the API use the event loop."""

    def __init__(
        self,
        path: str | Path,
        *,
        notify: NotifyConfig | None = None,
        building_names: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.notify = notify or NotifyConfig()
        self.building_names = dict(building_names or {})
        self._lock = threading.RLock()
        self._listeners: list[Callable[[AlertChange], None]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._closed = False

    @classmethod
    def from_config(cls, config: Any) -> AlertStore:
        """From a ``FiregridConfig`` (duck-typed: the alerts package does not import the gateway)."""
        path = config.resolve_path(config.store.path)
        names = {b.id: b.name for b in config.buildings}
        return cls(path, notify=config.notify, building_names=names)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # ------------------------------------------------------------------ listeners
    def add_listener(self, callback: Callable[[AlertChange], None]) -> None:
        """``callback(change)`` after each committed change, in the thread that made it.  Keep it quick."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[AlertChange], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def publish(self, change: AlertChange) -> None:
        """Tell listeners about something that is not a stored change (e.g. an SMS budget warning)."""
        self._publish([change])

    def _publish(self, changes: Sequence[AlertChange]) -> None:
        for change in changes:
            for callback in list(self._listeners):
                try:
                    callback(change)
                except Exception:  # a broken listener must not break the store
                    import logging

                    logging.getLogger(__name__).exception("alert listener failed")

    # ------------------------------------------------------------------ transactions
    def _tx(self) -> _Tx:
        return _Tx(self)

    # ------------------------------------------------------------------ apply
    def apply(self, transitions: Iterable[AlertTransition], *, now_ms: int) -> list[AlertChange]:
        """Persist engine transitions, incident grouping and the outbox rows they cause, in ONE transaction."""
        # Kept in the engine's order: a raise and a clear of one key in one batch must not swap.  Fire-first is the
        # outbox's job (priority), not the order of rows in this transaction.
        items = list(transitions)
        if not items:
            return []
        changes: list[AlertChange] = []
        with self._tx() as cur:
            for t in items:
                self._apply_one(cur, t, now_ms, changes)
        self._publish(changes)
        return changes

    def _apply_one(self, cur: sqlite3.Cursor, t: AlertTransition, now_ms: int, out: list[AlertChange]) -> None:
        drill = bool(getattr(t, "drill", False))
        row = cur.execute("SELECT * FROM alerts WHERE key = ? AND open = 1", (t.key,)).fetchone()
        if t.transition == "cleared":
            if row is None or row["condition"] == "cleared":
                return  # nothing open to clear (already resolved by a person, or cleared twice)
            cur.execute(
                "UPDATE alerts SET condition = 'cleared', cleared_ms = ?, updated_ms = ?, reason = ? WHERE id = ?",
                (now_ms, now_ms, t.reason, row["id"]),
            )
            self._audit(cur, row["id"], now_ms, "cleared", None, {"reason": t.reason})
            self._event(cur, "alert.cleared", row["id"], now_ms, out)
            return
        evidence = _json(
            [{"ts_ms": e.ts_ms, "device": e.device, "metric": e.metric, "value": e.value} for e in t.evidence]
        )
        value = None if t.value is None else _json(t.value)
        if row is None:
            incident_id, new_incident, _ = self._join_incident(cur, t, drill, now_ms)
            escalate = self._escalate_at(
                t.severity, test=t.test, drill=drill, grid=t.grid, building=t.building, tier=0, now_ms=now_ms
            )
            cur.execute(
                "INSERT INTO alerts (key, rule, severity, building, floor, device, grid, state, condition, reason,"
                " value, confirmed, flapping, test, drill, incident_id, ts_ms, raised_ms, updated_ms,"
                " escalate_at_ms, evidence) VALUES (?,?,?,?,?,?,?,'raised','active',?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    t.key,
                    t.rule,
                    int(t.severity),
                    t.building,
                    t.floor,
                    t.device,
                    t.grid,
                    t.reason,
                    value,
                    None if t.confirmed is None else int(t.confirmed),
                    int(t.flapping),
                    int(t.test),
                    int(drill),
                    incident_id,
                    t.ts_ms,
                    now_ms,
                    now_ms,
                    escalate,
                    evidence,
                ),
            )
            alert_id = int(cur.lastrowid or 0)
            self._audit(cur, alert_id, now_ms, "raised", None, {"reason": t.reason, "severity": t.severity.label})
            self._event(cur, "alert.raised", alert_id, now_ms, out, news=new_incident)
            self._incident_event(
                cur, "incident.opened" if new_incident else "incident.updated", incident_id, now_ms, out, test=t.test
            )
            if not t.test:
                self._page(cur, alert_id, tier=0, now_ms=now_ms)
            return
        # Re-trigger of an open alert: update it in place (never a duplicate).
        alert_id = int(row["id"])
        severity = max(int(row["severity"]), int(t.severity))
        rose = severity > int(row["severity"])
        escalate = row["escalate_at_ms"]
        if rose and row["state"] == "raised" and escalate is None:
            escalate = self._escalate_at(
                Severity(severity),
                test=bool(row["test"]),
                drill=drill,
                grid=row["grid"],
                building=row["building"],
                tier=int(row["tier"]),
                now_ms=now_ms,
            )
        cur.execute(
            "UPDATE alerts SET severity = ?, condition = 'active', reason = ?, value = ?, confirmed = ?,"
            " flapping = ?, updated_ms = ?, count = count + 1, evidence = ?, escalate_at_ms = ? WHERE id = ?",
            (
                severity,
                t.reason,
                value,
                None if t.confirmed is None else int(t.confirmed),
                int(t.flapping),
                now_ms,
                evidence,
                escalate,
                alert_id,
            ),
        )
        self._audit(cur, alert_id, now_ms, "updated", None, {"reason": t.reason, "severity": t.severity.label})
        self._event(cur, "alert.updated", alert_id, now_ms, out)
        if rose:
            cur.execute(
                "UPDATE incidents SET severity = MAX(severity, ?), updated_ms = ? WHERE id = ?",
                (severity, now_ms, row["incident_id"]),
            )
            self._incident_event(cur, "incident.updated", int(row["incident_id"]), now_ms, out, test=bool(row["test"]))
            if not row["test"]:
                self._page(cur, alert_id, tier=int(row["tier"]), now_ms=now_ms)

    def _escalate_at(
        self, severity: Severity, *, test: bool, drill: bool, grid: str | None, building: str, tier: int, now_ms: int
    ) -> int | None:
        # Only fire escalates, and only when there is a next tier to go to.  Drills and test alerts never do:
        # a drill must not wake the station leader at 3 am.
        if severity < Severity.FIRE or test or drill:
            return None
        tiers = routing.tier_count(self.notify, severity=severity, grid=grid, building=building)
        if tier + 1 >= tiers:
            return None
        return now_ms + int(self.notify.ack_timeout_s * 1000)

    def _join_incident(
        self, cur: sqlite3.Cursor, t: AlertTransition, drill: bool, now_ms: int
    ) -> tuple[int, bool, bool]:
        window_ms = int(self.notify.group_window_s * 1000)
        row = cur.execute(
            "SELECT id, severity FROM incidents WHERE building = ? AND drill = ? AND closed_ms IS NULL"
            " AND last_alert_ms >= ? ORDER BY id DESC LIMIT 1",
            (t.building, int(drill), now_ms - window_ms),
        ).fetchone()
        if row is not None:
            rose = int(t.severity) > int(row["severity"])
            cur.execute(
                "UPDATE incidents SET last_alert_ms = ?, updated_ms = ?, alert_count = alert_count + 1,"
                " open_count = open_count + 1, severity = MAX(severity, ?) WHERE id = ?",
                (now_ms, now_ms, int(t.severity), row["id"]),
            )
            return int(row["id"]), False, rose
        cur.execute(
            "INSERT INTO incidents (building, grid, drill, code, severity, opened_ms, last_alert_ms, updated_ms,"
            " alert_count, open_count) VALUES (?,?,?,?,?,?,?,?,1,1)",
            (t.building, t.grid, int(drill), self._new_code(cur), int(t.severity), now_ms, now_ms, now_ms),
        )
        return int(cur.lastrowid or 0), True, True

    @staticmethod
    def _new_code(cur: sqlite3.Cursor) -> str:
        # A short code for acknowledging by SMS reply; unique among open incidents.
        for digits in (4, 4, 4, 5, 6, 6, 6, 8):
            code = str(_secrets.randbelow(9 * 10 ** (digits - 1)) + 10 ** (digits - 1))
            if cur.execute("SELECT 1 FROM incidents WHERE code = ? AND closed_ms IS NULL", (code,)).fetchone() is None:
                return code
        return uuid.uuid4().hex[:10]

    @staticmethod
    def _audit(cur: sqlite3.Cursor, alert_id: int, now_ms: int, action: str, by: str | None, detail: Any) -> None:
        cur.execute(
            "INSERT INTO audit (alert_id, ts_ms, action, by, detail) VALUES (?,?,?,?,?)",
            (alert_id, now_ms, action, by, _json(detail)),
        )

    # ------------------------------------------------------------------ events -> outbox
    def _alert_record(self, row: sqlite3.Row) -> AlertRecord:
        """``row``: an ``alerts`` row joined with its incident's ``code``."""
        building = row["building"]
        return AlertRecord.from_row(row, building_name=self.building_names.get(building, building))

    def _incident_record(self, row: sqlite3.Row, alert_ids: tuple[int, ...] = ()) -> IncidentRecord:
        building = row["building"]
        return IncidentRecord.from_row(
            row, building_name=self.building_names.get(building, building), alert_ids=alert_ids
        )

    def _event(
        self,
        cur: sqlite3.Cursor,
        event: str,
        alert_id: int,
        now_ms: int,
        out: list[AlertChange],
        extra: Mapping[str, Any] | None = None,
        *,
        news: bool = False,
    ) -> None:
        row = cur.execute(
            "SELECT a.*, i.code AS code FROM alerts a JOIN incidents i ON i.id = a.incident_id WHERE a.id = ?",
            (alert_id,),
        ).fetchone()
        record = self._alert_record(row)
        data = record.payload()
        if extra:
            data.update(extra)
        self._enqueue(
            cur,
            event,
            data,
            severity=int(row["severity"]),
            drill=bool(row["drill"]),
            test=bool(row["test"]),
            alert_id=alert_id,
            incident_id=int(row["incident_id"]),
            now_ms=now_ms,
            news=news or event == "alert.escalated",
        )
        out.append(AlertChange(event, alert_id, int(row["incident_id"]), now_ms, data, record))

    def _incident_event(
        self,
        cur: sqlite3.Cursor,
        event: str,
        incident_id: int,
        now_ms: int,
        out: list[AlertChange],
        *,
        test: bool = False,
    ) -> None:
        row = cur.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        record = self._incident_record(row)
        data = record.payload()
        self._enqueue(
            cur,
            event,
            data,
            severity=int(row["severity"]),
            drill=bool(row["drill"]),
            test=test,
            alert_id=None,
            incident_id=incident_id,
            now_ms=now_ms,
            news=event == "incident.opened",
        )
        out.append(AlertChange(event, None, incident_id, now_ms, data, record))

    def _disabled(self, cur: sqlite3.Cursor) -> set[str]:
        return {r[0] for r in cur.execute("SELECT target FROM endpoints")}

    def _enqueue(
        self,
        cur: sqlite3.Cursor,
        event: str,
        data: Mapping[str, Any],
        *,
        severity: int,
        drill: bool,
        test: bool,
        alert_id: int | None,
        incident_id: int | None,
        now_ms: int,
        news: bool = False,
    ) -> None:
        body = orjson.dumps({"type": event, "timestamp": iso(now_ms), "data": data})
        rows: list[tuple[Any, ...]] = []
        endpoints: list[WebhookConfig] = []
        if not test:  # test alerts are recorded, never paged; only the governance platform mirrors them
            endpoints = self.notify.drill_receivers.webhooks if drill else self.notify.webhooks
        disabled = self._disabled(cur) if endpoints else set()
        for hook in endpoints:
            if hook.url in disabled or severity < Severity.parse(hook.min_severity):
                continue
            if not any(_matches(p, event) for p in hook.events):
                continue
            rows.append(("webhook", hook.url, _priority(severity, "webhook", news=news), None, None))
        gov = self.notify.governance
        if gov is not None and (not drill or gov.include_drills):
            rows.append(("governance", "governance", _priority(severity, "governance", news=news), None, None))
        subject = alert_id if event == "alert.updated" else incident_id if event == "incident.updated" else None
        if subject is not None:
            # An incident that grows by 200 detectors is one update, not 200, and an alarm re-triggered every second
            # is one update per delivery, not a queue of them: coalesce into the update still waiting.
            fresh = []
            for row in rows:
                dedup = f"{event}:{subject}:{row[1]}"
                cur.execute(
                    "UPDATE outbox SET body = ?, priority = MAX(priority, ?) WHERE dedup = ? AND state = 'pending'",
                    (body, row[2], dedup),
                )
                if cur.rowcount == 0:
                    fresh.append((*row, dedup))
            rows_d = fresh
        else:
            rows_d = [(*row, None) for row in rows]
        if rows_d:
            cur.executemany(
                "INSERT INTO outbox (msg_id, channel, target, event, priority, alert_id, incident_id, recipient,"
                " phone, body, state, next_ms, created_ms, dedup) VALUES (?,?,?,?,?,?,?,?,?,?,'pending',?,?,?)",
                [
                    (
                        f"msg_{uuid.uuid4().hex}",
                        ch,
                        target,
                        event,
                        prio,
                        alert_id,
                        incident_id,
                        rcp,
                        phone,
                        body,
                        now_ms,
                        now_ms,
                        dedup,
                    )
                    for ch, target, prio, rcp, phone, dedup in rows_d
                ],
            )

    # ------------------------------------------------------------------ SMS paging
    def _page(self, cur: sqlite3.Cursor, alert_id: int, *, tier: int, now_ms: int) -> list[str]:
        """Queue SMS for the alert's incident to the members of ``tier``: at most one per (incident, recipient) per
        update interval; a newer page for the same pair coalesces into the one still waiting."""
        sms = self.notify.sms
        row = cur.execute(
            "SELECT a.*, i.code AS code, i.alert_count AS incident_count FROM alerts a"
            " JOIN incidents i ON i.id = a.incident_id WHERE a.id = ?",
            (alert_id,),
        ).fetchone()
        severity = Severity(int(row["severity"]))
        people: list[routing.Recipient]
        if row["drill"]:
            people = [
                routing.Recipient(name=m.name, phone=m.phone, lang=m.lang, role="drill")
                for m in self.notify.drill_receivers.members
                if m.phone and tier == 0
            ]
        else:
            people = routing.recipients(
                self.notify, tier=tier, severity=severity, grid=row["grid"], building=row["building"], now_ms=now_ms
            )
        if sms is None or not people:
            return [p.name for p in people]
        interval_ms = sms.update_interval_s * 1000
        incident_id = int(row["incident_id"])
        for person in people:
            params = {
                "building": self.building_names.get(row["building"], row["building"])[:20],
                "location": _location(row)[:20],
                "severity": SEVERITY_ZH[severity.label] if person.lang == "zh" else severity.label.upper(),
                "code": row["code"],
                "count": str(row["incident_count"]),
            }
            body = orjson.dumps({"lang": person.lang, "params": params, "tier": tier, "drill": bool(row["drill"])})
            dedup = f"sms:{incident_id}:{person.phone}"
            prio = _priority(int(severity), "sms")
            page = cur.execute(
                "SELECT severity, last_ms FROM pages WHERE incident_id = ? AND phone = ?", (incident_id, person.phone)
            ).fetchone()
            waiting = cur.execute("SELECT id FROM outbox WHERE dedup = ? AND state = 'pending'", (dedup,)).fetchone()
            if waiting is not None:
                # Coalesce: the SMS not yet sent carries the newest picture (severity, count).
                cur.execute(
                    "UPDATE outbox SET body = ?, priority = MAX(priority, ?), alert_id = ? WHERE id = ?",
                    (body, prio, alert_id, waiting["id"]),
                )
                cur.execute(
                    "UPDATE pages SET severity = MAX(severity, ?) WHERE incident_id = ? AND phone = ?",
                    (int(severity), incident_id, person.phone),
                )
                continue
            if page is not None and int(page["severity"]) >= int(severity):
                continue  # this person already has this incident at this severity
            send_at = now_ms if page is None else max(now_ms, int(page["last_ms"]) + interval_ms)
            cur.execute(
                "INSERT INTO outbox (msg_id, channel, target, event, priority, alert_id, incident_id, recipient,"
                " phone, body, state, next_ms, created_ms, dedup) VALUES (?,?,?,?,?,?,?,?,?,?,'pending',?,?,?)",
                (
                    f"sms_{uuid.uuid4().hex}",
                    "sms",
                    "sms",
                    "sms.page",
                    prio,
                    alert_id,
                    incident_id,
                    person.name,
                    person.phone,
                    body,
                    send_at,
                    now_ms,
                    dedup,
                ),
            )
            cur.execute(
                "INSERT INTO pages (incident_id, phone, severity, last_ms) VALUES (?,?,?,?)"
                " ON CONFLICT(incident_id, phone) DO UPDATE SET severity = MAX(severity, excluded.severity),"
                " last_ms = excluded.last_ms",
                (incident_id, person.phone, int(severity), send_at),
            )
        return [p.name for p in people]

    # ------------------------------------------------------------------ escalation
    def next_escalation_ms(self) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(escalate_at_ms) FROM alerts WHERE escalate_at_ms IS NOT NULL AND open = 1"
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def escalate_due(self, *, now_ms: int) -> list[AlertChange]:
        """Escalate every unacknowledged fire whose ack timeout has passed to its next tier."""
        changes: list[AlertChange] = []
        with self._tx() as cur:
            due = cur.execute(
                "SELECT * FROM alerts WHERE escalate_at_ms IS NOT NULL AND escalate_at_ms <= ? AND open = 1"
                " ORDER BY severity DESC, escalate_at_ms",
                (now_ms,),
            ).fetchall()
            for row in due:
                if row["state"] != "raised":
                    cur.execute("UPDATE alerts SET escalate_at_ms = NULL WHERE id = ?", (row["id"],))
                    continue
                tier = int(row["tier"]) + 1
                nxt = self._escalate_at(
                    Severity(int(row["severity"])),
                    test=bool(row["test"]),
                    drill=bool(row["drill"]),
                    grid=row["grid"],
                    building=row["building"],
                    tier=tier,
                    now_ms=now_ms,
                )
                cur.execute(
                    "UPDATE alerts SET tier = ?, escalate_at_ms = ?, updated_ms = ? WHERE id = ?",
                    (tier, nxt, now_ms, row["id"]),
                )
                names = self._page(cur, int(row["id"]), tier=tier, now_ms=now_ms)
                self._audit(cur, int(row["id"]), now_ms, "escalated", None, {"tier": tier, "to": names})
                self._event(cur, "alert.escalated", int(row["id"]), now_ms, changes, extra={"escalated_to": names})
        self._publish(changes)
        return changes

    # ------------------------------------------------------------------ lifecycle
    def _load(self, cur: sqlite3.Cursor, alert_id: int) -> sqlite3.Row:
        row = cur.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None:
            raise AlertNotFound(alert_id)
        return row  # type: ignore[no-any-return]

    def acknowledge(self, alert_id: int, *, by: str, note: str | None = None, now_ms: int) -> AlertChange:
        changes: list[AlertChange] = []
        with self._tx() as cur:
            row = self._load(cur, alert_id)
            if row["state"] != "raised":
                raise InvalidTransition(alert_id, row["state"], "acknowledge")
            cur.execute(
                "UPDATE alerts SET state = 'acknowledged', acknowledged_ms = ?, acknowledged_by = ?, updated_ms = ?,"
                " escalate_at_ms = NULL, note = COALESCE(?, note) WHERE id = ?",
                (now_ms, by, now_ms, note, alert_id),
            )
            self._audit(cur, alert_id, now_ms, "acknowledged", by, {"note": note})
            self._event(cur, "alert.acknowledged", alert_id, now_ms, changes)
        self._publish(changes)
        return changes[0]

    def dispatch(self, alert_id: int, *, by: str, to: str, note: str | None = None, now_ms: int) -> AlertChange:
        changes: list[AlertChange] = []
        with self._tx() as cur:
            row = self._load(cur, alert_id)
            if row["state"] not in OPEN_STATES or not row["open"]:
                raise InvalidTransition(alert_id, row["state"], "dispatch")
            # Dispatching implies acknowledging: someone is on it, so escalation stops.
            cur.execute(
                "UPDATE alerts SET state = 'dispatched', dispatched_ms = ?, dispatched_to = ?, updated_ms = ?,"
                " acknowledged_ms = COALESCE(acknowledged_ms, ?), acknowledged_by = COALESCE(acknowledged_by, ?),"
                " escalate_at_ms = NULL, note = COALESCE(?, note) WHERE id = ?",
                (now_ms, to, now_ms, now_ms, by, note, alert_id),
            )
            self._audit(cur, alert_id, now_ms, "dispatched", by, {"to": to, "note": note})
            self._event(cur, "alert.dispatched", alert_id, now_ms, changes)
        self._publish(changes)
        return changes[0]

    def resolve(self, alert_id: int, *, by: str, cause: str, note: str | None = None, now_ms: int) -> AlertChange:
        if cause not in CAUSES:
            raise ValueError(f"cause must be one of {', '.join(CAUSES)}")
        changes: list[AlertChange] = []
        with self._tx() as cur:
            row = self._load(cur, alert_id)
            if not row["open"]:
                raise InvalidTransition(alert_id, row["state"], "resolve")
            cur.execute(
                "UPDATE alerts SET state = 'resolved', open = 0, resolved_ms = ?, resolved_by = ?, cause = ?,"
                " note = COALESCE(?, note), updated_ms = ?, escalate_at_ms = NULL WHERE id = ?",
                (now_ms, by, cause, note, now_ms, alert_id),
            )
            self._audit(cur, alert_id, now_ms, "resolved", by, {"cause": cause, "note": note})
            self._event(cur, "alert.resolved", alert_id, now_ms, changes)
            incident_id = int(row["incident_id"])
            cur.execute(
                "UPDATE incidents SET open_count = open_count - 1, updated_ms = ? WHERE id = ?", (now_ms, incident_id)
            )
            left = cur.execute("SELECT open_count FROM incidents WHERE id = ?", (incident_id,)).fetchone()[0]
            if left <= 0:
                cur.execute("UPDATE incidents SET closed_ms = ? WHERE id = ?", (now_ms, incident_id))
                # Nobody needs a page about an incident that is over.
                cur.execute(
                    "UPDATE outbox SET state = 'cancelled', done_ms = ?, last_error = 'incident resolved'"
                    " WHERE incident_id = ? AND channel = 'sms' AND state = 'pending'",
                    (now_ms, incident_id),
                )
                self._incident_event(cur, "incident.resolved", incident_id, now_ms, changes, test=bool(row["test"]))
        self._publish(changes)
        return changes[0]

    def acknowledge_incident(
        self, incident_id: int, *, by: str, note: str | None = None, now_ms: int
    ) -> list[AlertChange]:
        """Acknowledge every still-``raised`` alert of an incident (an SMS reply acknowledges what it paged)."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM alerts WHERE incident_id = ? AND state = 'raised' AND open = 1", (incident_id,)
                )
            ]
        out = []
        for alert_id in ids:
            try:
                out.append(self.acknowledge(alert_id, by=by, note=note, now_ms=now_ms))
            except InvalidTransition:
                continue  # acknowledged meanwhile by someone else
        return out

    def incident_by_code(self, code: str) -> IncidentRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM incidents WHERE code = ? AND closed_ms IS NULL ORDER BY id DESC LIMIT 1", (code,)
            ).fetchone()
        return None if row is None else self._incident_record(row)

    # ------------------------------------------------------------------ queries
    def get_alert(self, alert_id: int) -> AlertDetail | None:
        """One alert with its audit trail and evidence."""
        with self._lock:
            row = self._db.execute(
                "SELECT a.*, i.code AS code FROM alerts a JOIN incidents i ON i.id = a.incident_id WHERE a.id = ?",
                (alert_id,),
            ).fetchone()
            if row is None:
                return None
            audit = self._db.execute(
                "SELECT ts_ms, action, by, detail FROM audit WHERE alert_id = ? ORDER BY id", (alert_id,)
            ).fetchall()
        building = row["building"]
        fields = AlertRecord.fields_from_row(row, building_name=self.building_names.get(building, building))
        trail = tuple(AuditEntry.from_row(a) for a in audit)
        evidence = tuple(Evidence(**e) for e in orjson.loads(row["evidence"]))
        return AlertDetail(*(*fields, trail, evidence))

    def list_alerts(
        self,
        *,
        state: str | Sequence[str] | None = None,
        severity: str | int | None = None,
        building: str | Sequence[str] | None = None,
        grid: str | Sequence[str] | None = None,
        since_ms: int | None = None,
        open_only: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AlertRecord]:
        """Newest first.  ``severity`` is a minimum; list-valued filters match any of the values (so that the API
        can apply a token's grid/building scope)."""
        where: list[str] = []
        args: list[Any] = []

        def any_of(column: str, value: str | Sequence[str] | None) -> None:
            if value is None:
                return
            values = [value] if isinstance(value, str) else list(value)
            where.append(f"a.{column} IN ({','.join('?' * len(values))})" if values else "0")
            args.extend(values)

        any_of("state", state)
        any_of("building", building)
        any_of("grid", grid)
        if severity is not None:
            where.append("a.severity >= ?")
            args.append(int(Severity.parse(severity)))
        if since_ms is not None:
            where.append("a.updated_ms >= ?")
            args.append(since_ms)
        if open_only:
            where.append("a.open = 1")
        sql = "SELECT a.*, i.code AS code FROM alerts a JOIN incidents i ON i.id = a.incident_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += (
            " ORDER BY a.severity DESC, a.id DESC LIMIT ? OFFSET ?"
            if open_only
            else " ORDER BY a.id DESC LIMIT ? OFFSET ?"
        )
        args += [max(0, min(limit, 10_000)), max(0, offset)]
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._alert_record(r) for r in rows]

    def list_incidents(
        self,
        *,
        state: Literal["open", "resolved"] | None = None,
        building: str | Sequence[str] | None = None,
        grid: str | Sequence[str] | None = None,
        since_ms: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[IncidentRecord]:
        where: list[str] = []
        args: list[Any] = []
        if state == "open":
            where.append("closed_ms IS NULL")
        elif state == "resolved":
            where.append("closed_ms IS NOT NULL")
        for column, value in (("building", building), ("grid", grid)):
            if value is not None:
                values = [value] if isinstance(value, str) else list(value)
                where.append(f"{column} IN ({','.join('?' * len(values))})" if values else "0")
                args.extend(values)
        if since_ms is not None:
            where.append("updated_ms >= ?")
            args.append(since_ms)
        sql = "SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        args += [max(0, min(limit, 10_000)), max(0, offset)]
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for r in rows:
            with self._lock:
                ids = tuple(
                    x[0]
                    for x in self._db.execute(
                        "SELECT id FROM alerts WHERE incident_id = ? ORDER BY id LIMIT 1000", (r["id"],)
                    )
                )
            out.append(self._incident_record(r, ids))
        return out

    def active_alerts(self) -> list[AlertRecord]:
        """Every open (not yet resolved) alert, fire first: for restoring the engine and the dashboard."""
        return self.list_alerts(open_only=True, limit=10_000)

    # ------------------------------------------------------------------ outbox (used by the notifier)
    def recover(self, *, now_ms: int) -> int:
        """After a restart: an SMS caught in ``attempting`` may or may not have gone out.  It becomes ``unknown``
        (to reconcile with the provider), never a blind resend."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = 'unknown', done_ms = ?, last_error = 'interrupted while sending'"
                " WHERE state = 'attempting'",
                (now_ms,),
            )
            return int(cur.rowcount)

    def due(
        self,
        *,
        now_ms: int,
        limit: int = 100,
        exclude: Iterable[int] = (),
        channel: str | None = None,
        exclude_targets: Iterable[str] = (),
    ) -> list[OutboxItem]:
        """Pending rows whose time has come, highest priority (fire) first, skipping ``exclude`` (in flight) and
        rows for ``exclude_targets`` (endpoints already at their share of the workers)."""
        skip = set(exclude)
        # Walk the (channel, priority, id) index and stop after ``limit`` rows: never sort the whole backlog.
        sql = "SELECT * FROM outbox WHERE state = 'pending' AND next_ms <= ?"
        args: list[Any] = [now_ms]
        if channel is not None:
            sql = "SELECT * FROM outbox INDEXED BY outbox_due WHERE state = 'pending' AND channel = ? AND next_ms <= ?"
            args = [channel, now_ms]
        targets = list(exclude_targets)
        if targets:
            sql += f" AND target NOT IN ({','.join('?' * len(targets))})"
            args.extend(targets)
        sql += " ORDER BY priority DESC, id LIMIT ?"
        args.append(limit + len(skip))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [OutboxItem.from_row(r) for r in rows if r["id"] not in skip][:limit]

    def next_due_ms(
        self, *, exclude: Iterable[int] = (), channels: Iterable[str] | None = None, _channel: str | None = None
    ) -> int | None:
        """When the next pending row (not in ``exclude``, in one of ``channels``) is due."""
        sql = "SELECT MIN(next_ms) FROM outbox WHERE state = 'pending'"
        args: list[Any] = []
        skip = list(exclude)
        if skip:
            sql += f" AND id NOT IN ({','.join('?' * len(skip))})"
            args.extend(skip)
        if channels is not None:
            wanted = list(channels)
            if not wanted:
                return None
            # One indexed MIN per channel (channel, next_ms): never a scan of the whole backlog.
            found = [self.next_due_ms(exclude=skip, channels=None, _channel=ch) for ch in wanted]
            times = [t for t in found if t is not None]
            return min(times) if times else None
        if _channel is not None:
            sql += " AND channel = ?"
            args.append(_channel)
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row[0] is None else int(row[0])

    def outbox(self, *, state: str | None = None, channel: str | None = None) -> list[OutboxRecord]:
        """Outbox rows (for tests, the API and operators reconciling ``unknown`` SMS)."""
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if channel:
            where.append("channel = ?")
            args.append(channel)
        sql = "SELECT * FROM outbox" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [OutboxRecord.from_row(r) for r in rows]

    def mark_attempting(self, item_id: int, *, now_ms: int) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = 'attempting', attempt_ms = ?, attempts = attempts + 1 WHERE id = ?",
                (now_ms, item_id),
            )

    def mark_done(
        self, item_id: int, *, state: str, now_ms: int, error: str | None = None, attempted: bool = False
    ) -> None:
        """``sent``, ``failed`` (permanent), ``unknown`` (SMS timed out), ``suppressed`` (budget), ``dead``."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = ?, done_ms = ?, last_error = ?, attempts = attempts + ?,"
                " attempt_ms = COALESCE(attempt_ms, ?) WHERE id = ?",
                (state, now_ms, error, int(attempted), now_ms, item_id),
            )

    def mark_retry(self, item_id: int, *, next_ms: int, error: str | None, count_attempt: bool = False) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = 'pending', next_ms = ?, last_error = ?,"
                " attempts = attempts + ? WHERE id = ?",
                (next_ms, error, int(count_attempt), item_id),
            )

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record many delivery attempts in ONE transaction."""
        retries = [(o.next_ms, o.error, int(o.attempted), o.now_ms, o.id) for o in outcomes if o.state == "pending"]
        done = [
            (o.state, o.now_ms, o.error, int(o.attempted), o.now_ms, o.id) for o in outcomes if o.state != "pending"
        ]
        with self._tx() as cur:
            if retries:
                cur.executemany(
                    "UPDATE outbox SET state = 'pending', next_ms = ?, last_error = ?, attempts = attempts + ?,"
                    " attempt_ms = ? WHERE id = ?",
                    retries,
                )
            if done:
                cur.executemany(
                    "UPDATE outbox SET state = ?, done_ms = ?, last_error = ?, attempts = attempts + ?,"
                    " attempt_ms = COALESCE(attempt_ms, ?) WHERE id = ?",
                    done,
                )

    def sms_count(self, *, phone: str | None, since_ms: int) -> int:
        """SMS that went (or may have gone) out since ``since_ms``: to one number, or to anyone."""
        sql = (
            "SELECT COUNT(*) FROM outbox WHERE channel = 'sms' AND state IN ('attempting', 'sent', 'unknown')"
            " AND attempt_ms >= ?"
        )
        args: list[Any] = [since_ms]
        if phone is not None:
            sql += " AND phone = ?"
            args.append(phone)
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    def oldest_sms_since(self, *, phone: str | None, since_ms: int) -> int | None:
        sql = (
            "SELECT MIN(attempt_ms) FROM outbox WHERE channel = 'sms' AND state IN ('attempting', 'sent',"
            " 'unknown') AND attempt_ms >= ?"
        )
        args: list[Any] = [since_ms]
        if phone is not None:
            sql += " AND phone = ?"
            args.append(phone)
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row[0] is None else int(row[0])

    def prune_outbox(self, *, before_ms: int) -> int:
        """Forget finished outbox rows older than ``before_ms`` (the alerts and their audit trail stay).  SMS rows
        are kept for two days at least: the daily budget and the rate limits count them."""
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM outbox WHERE state IN ('sent', 'failed', 'dead', 'suppressed', 'cancelled')"
                " AND COALESCE(done_ms, created_ms) < ? AND (channel != 'sms' OR created_ms < ?)",
                (before_ms, before_ms - 2 * 86_400_000),
            )
            return int(cur.rowcount)

    def reconcile_sms(self, item_id: int, *, delivered: bool, now_ms: int) -> None:
        """An operator checked an ``unknown`` SMS with the provider: mark it ``sent``, or queue it again."""
        with self._tx() as cur:
            row = cur.execute("SELECT state FROM outbox WHERE id = ? AND channel = 'sms'", (item_id,)).fetchone()
            if row is None or row["state"] != "unknown":
                raise AlertStoreError(f"outbox row {item_id} is not an SMS in state unknown")
            if delivered:
                cur.execute(
                    "UPDATE outbox SET state = 'sent', last_error = 'reconciled: delivered' WHERE id = ?", (item_id,)
                )
            else:
                cur.execute(
                    "UPDATE outbox SET state = 'pending', next_ms = ?, last_error = 'reconciled: not delivered',"
                    " dedup = NULL WHERE id = ?",
                    (now_ms, item_id),
                )

    def disable_endpoint(self, target: str, *, reason: str, now_ms: int) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO endpoints (target, disabled_ms, reason) VALUES (?,?,?)",
                (target, now_ms, reason),
            )
            cur.execute(
                "UPDATE outbox SET state = 'failed', done_ms = ?, last_error = ?"
                " WHERE target = ? AND state = 'pending'",
                (now_ms, f"endpoint disabled: {reason}", target),
            )

    def enable_endpoint(self, target: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM endpoints WHERE target = ?", (target,))

    def disabled_endpoints(self) -> dict[str, str]:
        with self._lock:
            return {r[0]: r[1] or "" for r in self._db.execute("SELECT target, reason FROM endpoints")}


class _Tx:
    """``with store._tx() as cur``: one IMMEDIATE transaction under the store lock, committed on success."""

    def __init__(self, store: AlertStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Cursor:
        self.store._lock.acquire()
        try:
            self.cur = self.store._db.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store._lock.release()
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
            self.store._lock.release()
