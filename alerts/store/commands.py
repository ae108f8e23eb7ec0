"""What operators do to an alert: acknowledge (stops escalation), dispatch someone, resolve with a cause (what
they do to a whole incident is :mod:`alerts.store.incidents`).  Each step is one transaction with its audit entry
and the events it causes; resolving the last open alert of an incident closes it and cancels the pages still waiting."""

from __future__ import annotations

from alerts.records import CAUSES, OPEN_STATES, AlertChange
from alerts.store.core import Core, TxCursor, audit
from alerts.store.errors import AlertNotFound, InvalidTransition
from alerts.store.events import alert_event, incident_event
from alerts.store.incidents import close
from alerts.store.voice import cancel_calls
from common.db import Row


class Commands:
    """What operators do (a part of :class:`~alerts.store.AlertStore`)."""

    _core: Core

    def acknowledge(self, alert_id: int, *, by: str, note: str | None = None, now_ms: int) -> AlertChange:
        changes: list[AlertChange] = []
        with self._core.tx() as cur:
            row = _load(cur, alert_id)
            if row["state"] != "raised":
                raise InvalidTransition(alert_id, row["state"], "acknowledge")
            cur.execute(
                "UPDATE alerts SET state = 'acknowledged', acknowledged_ms = ?, acknowledged_by = ?, updated_ms = ?,"
                " escalate_at_ms = NULL, note = COALESCE(?, note) WHERE id = ?",
                (now_ms, by, now_ms, note, alert_id),
            )
            audit(cur, alert_id, now_ms, "acknowledged", by, {"note": note})
            alert_event(self._core, cur, "alert.acknowledged", alert_id, now_ms, changes)
            cancel_calls(cur, int(row["incident_id"]), now_ms=now_ms, reason=f"acknowledged by {by}")
        self._core.publish(changes)
        return changes[0]

    def dispatch(self, alert_id: int, *, by: str, to: str, note: str | None = None, now_ms: int) -> AlertChange:
        changes: list[AlertChange] = []
        with self._core.tx() as cur:
            row = _load(cur, alert_id)
            if row["state"] not in OPEN_STATES or not row["open"]:
                raise InvalidTransition(alert_id, row["state"], "dispatch")
            # Dispatching implies acknowledging: someone is on it, so escalation stops.
            cur.execute(
                "UPDATE alerts SET state = 'dispatched', dispatched_ms = ?, dispatched_to = ?, updated_ms = ?,"
                " acknowledged_ms = COALESCE(acknowledged_ms, ?), acknowledged_by = COALESCE(acknowledged_by, ?),"
                " escalate_at_ms = NULL, note = COALESCE(?, note) WHERE id = ?",
                (now_ms, to, now_ms, now_ms, by, note, alert_id),
            )
            audit(cur, alert_id, now_ms, "dispatched", by, {"to": to, "note": note})
            alert_event(self._core, cur, "alert.dispatched", alert_id, now_ms, changes)
            cancel_calls(cur, int(row["incident_id"]), now_ms=now_ms, reason=f"dispatched by {by}")
        self._core.publish(changes)
        return changes[0]

    def resolve(self, alert_id: int, *, by: str, cause: str, note: str | None = None, now_ms: int) -> AlertChange:
        if cause not in CAUSES:
            raise ValueError(f"cause must be one of {', '.join(CAUSES)}")
        changes: list[AlertChange] = []
        with self._core.tx() as cur:
            row = _load(cur, alert_id)
            if not row["open"]:
                raise InvalidTransition(alert_id, row["state"], "resolve")
            cur.execute(
                "UPDATE alerts SET state = 'resolved', open = 0, resolved_ms = ?, resolved_by = ?, cause = ?,"
                " note = COALESCE(?, note), updated_ms = ?, escalate_at_ms = NULL WHERE id = ?",
                (now_ms, by, cause, note, now_ms, alert_id),
            )
            audit(cur, alert_id, now_ms, "resolved", by, {"cause": cause, "note": note})
            alert_event(self._core, cur, "alert.resolved", alert_id, now_ms, changes)
            incident_id = int(row["incident_id"])
            cancel_calls(cur, incident_id, now_ms=now_ms, reason="resolved")
            cur.execute(
                "UPDATE incidents SET open_count = open_count - 1, updated_ms = ? WHERE id = ?", (now_ms, incident_id)
            )
            left = cur.execute("SELECT open_count FROM incidents WHERE id = ?", (incident_id,)).fetchone()[0]
            if left <= 0:
                cur.execute("UPDATE incidents SET closed_ms = ? WHERE id = ?", (now_ms, incident_id))
                close(self._core, cur, incident_id, now_ms=now_ms, actor=by, cause=cause, note=note)
                incident_event(
                    self._core, cur, "incident.resolved", incident_id, now_ms, changes, test=bool(row["test"])
                )
        self._core.publish(changes)
        return changes[0]


def _load(cur: TxCursor, alert_id: int) -> Row:
    # FOR UPDATE on PostgreSQL: the state read here decides the step, so no one else's step may slip in between.
    row = cur.execute("SELECT * FROM alerts WHERE id = ?" + cur.for_update, (alert_id,)).fetchone()
    if row is None:
        raise AlertNotFound(alert_id)
    return row
