"""What the rules engine decided, made durable: ``apply`` writes a batch of transitions (alerts raised, updated,
cleared; incidents opened and grown) and the outbox rows they cause in ONE transaction, and ``escalate_due`` moves
unacknowledged fires to their next tier.

Why one transaction: the gateway acknowledges the MQTT messages behind a batch only after ``apply`` returns, so a
crash either loses both (the broker redelivers) or keeps both (the outbox resumes).  A re-triggered open alert
(same ``key``) is updated, never duplicated; the condition clearing is recorded but never closes an alert.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Collection, Iterable

from alerts import fanout, routing
from alerts.records import AlertChange
from alerts.store.core import Core, TxCursor, audit, building_scope, log_step, to_json
from alerts.store.events import alert_event, incident_event
from alerts.store.incidents import late_arrivals
from common.db import Cursor
from rules.types import AlertTransition, Severity


class Transitions:
    """What the engine decided (a part of :class:`~alerts.store.AlertStore`)."""

    _core: Core

    def apply(
        self,
        transitions: Iterable[AlertTransition],
        *,
        now_ms: int,
        also: Callable[[Cursor], None] | None = None,
    ) -> list[AlertChange]:
        """Persist engine transitions, incident grouping and the outbox rows they cause, in ONE transaction.
        ``also``: more writes of the same group commit, made in that transaction (the gateway's engine snapshots,
        kept in the same file): one commit, one fsync."""
        # Kept in the engine's order: a raise and a clear of one key in one batch must not swap.  Fire-first is the
        # outbox's job (priority), not the order of rows in this transaction.
        items = list(transitions)
        if not items and also is None:
            return []
        changes: list[AlertChange] = []
        with self._core.tx() as cur:
            for t in items:
                _apply_one(self._core, cur, t, now_ms, changes)
            if also is not None:
                also(cur)
        self._core.publish(changes)
        return changes

    def next_escalation_ms(self, *, buildings: Collection[str] | None = None) -> int | None:
        """The next unacknowledged alert's escalation, or the next dispatched station's on-scene deadline (of
        ``buildings`` only, when given)."""
        scope, scoped = building_scope(buildings)
        with self._core.lock:
            row = self._core.db.execute(
                "SELECT MIN(escalate_at_ms) FROM alerts WHERE escalate_at_ms IS NOT NULL AND open = 1" + scope, scoped
            ).fetchone()
            late = self._core.db.execute(
                "SELECT MIN(arrive_by_ms) FROM incidents WHERE arrive_by_ms IS NOT NULL" + scope, scoped
            ).fetchone()
        times = [int(t) for t in (row[0], late[0]) if t is not None]
        return min(times) if times else None

    def escalate_due(self, *, now_ms: int, buildings: Collection[str] | None = None) -> list[AlertChange]:
        """Escalate every unacknowledged alert whose ack timeout has passed to its next tier, and every dispatched
        incident whose station is not on scene by its target.  Returns the escalations: ``alert.escalated`` for the
        alerts, ``incident.escalated`` for late stations; the ``incident.escalated`` that goes with an alert's
        escalation (one per incident, for the governance platform) is published and sent, not returned.
        ``buildings``: only theirs (a cluster gateway escalates the buildings it owns; None: every building)."""
        changes: list[AlertChange] = []
        alongside: list[AlertChange] = []
        escalated: dict[int, tuple[int, list[str], str]] = {}  # incident -> (tier, who, why): one event each
        scope, scoped = building_scope(buildings)
        with self._core.tx() as cur:
            due = cur.execute(
                "SELECT * FROM alerts WHERE escalate_at_ms IS NOT NULL AND escalate_at_ms <= ? AND open = 1"
                + scope
                + " ORDER BY severity DESC, escalate_at_ms"
                + cur.for_update,
                (now_ms, *scoped),
            ).fetchall()
            for row in due:
                if row["state"] != "raised":
                    cur.execute("UPDATE alerts SET escalate_at_ms = NULL WHERE id = ?", (row["id"],))
                    continue
                tier = int(row["tier"]) + 1
                nxt = fanout.escalate_at(
                    self._core.notify,
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
                names = fanout.page(
                    cur, self._core.notify, self._core.building_names, int(row["id"]), tier=tier, now_ms=now_ms
                )
                audit(cur, int(row["id"]), now_ms, "escalated", None, {"tier": tier, "to": names})
                alert_event(
                    self._core, cur, "alert.escalated", int(row["id"]), now_ms, changes, extra={"escalated_to": names}
                )
                timeout = routing.ack_timeout_s(
                    self._core.notify,
                    severity=Severity(int(row["severity"])),
                    grid=row["grid"],
                    building=row["building"],
                )
                reason = "not acknowledged in time" if timeout is None else f"not acknowledged within {timeout:g} s"
                escalated.setdefault(int(row["incident_id"]), (tier, names, reason))
            for incident_id, (tier, names, reason) in escalated.items():
                log_step(cur, incident_id, now_ms, "escalated", actor="system", detail={"tier": tier, "reason": reason})
                incident_event(
                    self._core, cur, "incident.escalated", incident_id, now_ms, alongside, extra={"escalated_to": names}
                )
            late_arrivals(self._core, cur, now_ms, changes, buildings=buildings)
        self._core.publish([*changes, *alongside])
        return changes


def _apply_one(core: Core, cur: TxCursor, t: AlertTransition, now_ms: int, out: list[AlertChange]) -> None:
    drill = bool(getattr(t, "drill", False))
    row = cur.execute("SELECT * FROM alerts WHERE key = ? AND open = 1" + cur.for_update, (t.key,)).fetchone()
    if t.transition == "cleared":
        if row is None or row["condition"] == "cleared":
            return  # nothing open to clear (already resolved by a person, or cleared twice)
        cur.execute(
            "UPDATE alerts SET condition = 'cleared', cleared_ms = ?, updated_ms = ?, reason = ? WHERE id = ?",
            (now_ms, now_ms, t.reason, row["id"]),
        )
        audit(cur, row["id"], now_ms, "cleared", None, {"reason": t.reason})
        alert_event(core, cur, "alert.cleared", row["id"], now_ms, out)
        return
    evidence = to_json(
        [{"ts_ms": e.ts_ms, "device": e.device, "metric": e.metric, "value": e.value} for e in t.evidence]
    )
    value = None if t.value is None else to_json(t.value)
    if row is None:
        incident_id, new_incident, _ = _join_incident(core, cur, t, drill, now_ms)
        escalate = fanout.escalate_at(
            core.notify, t.severity, test=t.test, drill=drill, grid=t.grid, building=t.building, tier=0, now_ms=now_ms
        )
        cur.execute(
            "INSERT INTO alerts (key, rule, severity, building, floor, device, grid, state, condition, reason,"
            " value, confirmed, flapping, test, drill, incident_id, ts_ms, raised_ms, updated_ms,"
            " escalate_at_ms, evidence) VALUES (?,?,?,?,?,?,?,'raised','active',?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
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
        alert_id = int(cur.fetchone()[0])
        audit(cur, alert_id, now_ms, "raised", None, {"reason": t.reason, "severity": t.severity.label})
        alert_event(core, cur, "alert.raised", alert_id, now_ms, out, news=new_incident)
        incident_event(
            core, cur, "incident.opened" if new_incident else "incident.updated", incident_id, now_ms, out, test=t.test
        )
        if not t.test:
            fanout.page(cur, core.notify, core.building_names, alert_id, tier=0, now_ms=now_ms)
        return
    # Re-trigger of an open alert: update it in place (never a duplicate).
    alert_id = int(row["id"])
    severity = max(int(row["severity"]), int(t.severity))
    rose = severity > int(row["severity"])
    escalate = row["escalate_at_ms"]
    if rose and row["state"] == "raised" and escalate is None:
        escalate = fanout.escalate_at(
            core.notify,
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
    audit(cur, alert_id, now_ms, "updated", None, {"reason": t.reason, "severity": t.severity.label})
    alert_event(core, cur, "alert.updated", alert_id, now_ms, out)
    if rose:
        cur.execute(
            "UPDATE incidents SET severity = CASE WHEN severity < ? THEN ? ELSE severity END, updated_ms = ?"
            " WHERE id = ?",
            (severity, severity, now_ms, row["incident_id"]),
        )
        incident_event(core, cur, "incident.updated", int(row["incident_id"]), now_ms, out, test=bool(row["test"]))
        if not row["test"]:
            fanout.page(cur, core.notify, core.building_names, alert_id, tier=int(row["tier"]), now_ms=now_ms)


def _join_incident(core: Core, cur: TxCursor, t: AlertTransition, drill: bool, now_ms: int) -> tuple[int, bool, bool]:
    window_ms = int(core.notify.group_window_s * 1000)
    row = cur.execute(
        "SELECT id, severity FROM incidents WHERE building = ? AND drill = ? AND closed_ms IS NULL"
        " AND last_alert_ms >= ? ORDER BY id DESC LIMIT 1" + cur.for_update,
        (t.building, int(drill), now_ms - window_ms),
    ).fetchone()
    if row is not None:
        rose = int(t.severity) > int(row["severity"])
        cur.execute(
            "UPDATE incidents SET last_alert_ms = ?, updated_ms = ?, alert_count = alert_count + 1,"
            " open_count = open_count + 1, severity = CASE WHEN severity < ? THEN ? ELSE severity END WHERE id = ?",
            (now_ms, now_ms, int(t.severity), int(t.severity), row["id"]),
        )
        return int(row["id"]), False, rose
    incident_id = None
    while incident_id is None:
        # The reply code is unique among open incidents (an index): a code another writer took meanwhile inserts
        # nothing here, and we draw again.
        found = cur.execute(
            "INSERT INTO incidents (building, grid, drill, code, severity, opened_ms, last_alert_ms, updated_ms,"
            " alert_count, open_count) VALUES (?,?,?,?,?,?,?,?,1,1)"
            " ON CONFLICT (code) WHERE closed_ms IS NULL DO NOTHING RETURNING id",
            (t.building, t.grid, int(drill), _new_code(cur), int(t.severity), now_ms, now_ms, now_ms),
        ).fetchone()
        incident_id = None if found is None else int(found[0])
    log_step(cur, incident_id, now_ms, "opened", actor="system", detail={"rule": t.rule, "severity": t.severity.label})
    return incident_id, True, True


def _new_code(cur: Cursor) -> str:
    # A short code for acknowledging by SMS reply; unique among open incidents.
    for digits in (4, 4, 4, 5, 6, 6, 6, 8):
        code = str(secrets.randbelow(9 * 10 ** (digits - 1)) + 10 ** (digits - 1))
        if cur.execute("SELECT 1 FROM incidents WHERE code = ? AND closed_ms IS NULL", (code,)).fetchone() is None:
            return code
    return uuid.uuid4().hex[:10]
