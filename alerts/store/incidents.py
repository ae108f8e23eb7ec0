"""What the duty room does to an incident, the unit of its work: acknowledge, dispatch a station (which pages its
members), mark it on scene, resolve it with a cause, attach the governance platform's work-order id; and the
station's on-scene clock, escalated when it runs out.

Acting on an incident acts on all its open alerts in ONE transaction, together with its timeline step
(``incident_events``) and the outbox rows it causes: a crash keeps all of it or none.  The alert-level steps stay
for the single-detector case (:mod:`alerts.store.commands`) and leave the incident's state alone, but for
resolving its last open alert, which closes it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from alerts import dispatch, fanout, routing
from alerts.records import CAUSES, AlertChange, IncidentRecord
from alerts.store.core import Core, TxCursor, audit, building_scope, incident_facts, log_step
from alerts.store.errors import IncidentNotFound, InvalidIncidentTransition
from alerts.store.events import alert_event, incident_event
from alerts.store.voice import cancel_calls
from common.db import Connection, Cursor, Row

# The states from which each step may be taken.
_ACK_FROM = ("open", "acknowledged", "dispatched", "on_scene")
_DISPATCH_FROM = ("open", "acknowledged", "dispatched")
_ARRIVE_FROM = ("open", "acknowledged", "dispatched")


class IncidentCommands:
    """What operators do to an incident (a part of :class:`~alerts.store.AlertStore`)."""

    _core: Core

    def acknowledge_incident(
        self,
        incident_id: int,
        *,
        by: str,
        note: str | None = None,
        now_ms: int,
        actor: str | None = None,
        by_name: str | None = None,
    ) -> list[AlertChange]:
        """Acknowledge the incident and every still-``raised`` alert of it.  ``by`` is what the alerts record as
        ``acknowledged_by``; ``actor`` (default ``by``) the principal and ``by_name`` the person, for the timeline.
        Raises :class:`InvalidIncidentTransition` when there is nothing left to acknowledge."""
        changes: list[AlertChange] = []
        with self._core.tx() as cur:
            row = _load(cur, incident_id)
            raised = _raised(cur, incident_id)
            if row["state"] not in _ACK_FROM or (row["state"] != "open" and not raised):
                raise InvalidIncidentTransition(incident_id, row["state"], "acknowledge")
            _ack_alerts(self._core, cur, raised, by=by, note=note, now_ms=now_ms, out=changes)
            if row["state"] == "open":
                cur.execute(
                    "UPDATE incidents SET state = 'acknowledged', updated_ms = ?, note = COALESCE(?, note)"
                    " WHERE id = ?",
                    (now_ms, note, incident_id),
                )
                log_step(
                    cur, incident_id, now_ms, "acknowledged", actor=actor or by, by_name=by_name, detail=_note(note)
                )
                incident_event(self._core, cur, "incident.acknowledged", incident_id, now_ms, changes)
        self._core.publish(changes)
        return changes

    def dispatch_incident(
        self,
        incident_id: int,
        *,
        actor: str,
        by_name: str | None = None,
        station: str | None = None,
        members: Sequence[str] | None = None,
        note: str | None = None,
        now_ms: int,
    ) -> tuple[list[AlertChange], dispatch.Decision]:
        """Send a station (``station``), named members (``members``), or with neither the nearest available
        on-duty station covering the building; page every member sent at once and start the station's on-scene
        clock.  Raises :class:`alerts.dispatch.DispatchError` when nobody can be chosen."""
        notify = self._core.notify
        changes: list[AlertChange] = []
        with self._core.tx() as cur:
            row = _load(cur, incident_id)
            if row["state"] not in _DISPATCH_FROM:
                raise InvalidIncidentTransition(incident_id, row["state"], "dispatch")
            decision = dispatch.choose(
                self._core.plan,
                building=row["building"],
                grid=row["grid"],
                on_duty=routing.on_duty_by_name(notify, now_ms=now_ms),
                roster={m.name for m in notify.roster},
                committed={k: v for k, v in committed(cur).items() if v != incident_id},
                station=station,
                members=members,
            )
            sent = self._station_name(decision.station) or ", ".join(decision.members)
            by = by_name or actor
            for alert_id in _open_alerts(cur, incident_id):
                cur.execute(
                    "UPDATE alerts SET state = 'dispatched', dispatched_ms = ?, dispatched_to = ?, updated_ms = ?,"
                    " acknowledged_ms = COALESCE(acknowledged_ms, ?), acknowledged_by = COALESCE(acknowledged_by, ?),"
                    " escalate_at_ms = NULL WHERE id = ?",
                    (now_ms, sent[:100], now_ms, now_ms, by, alert_id),
                )
                audit(cur, alert_id, now_ms, "dispatched", by, {"to": sent, "note": note, "incident": incident_id})
                alert_event(self._core, cur, "alert.dispatched", alert_id, now_ms, changes)
            cur.execute(
                "UPDATE incidents SET state = 'dispatched', station = ?, on_scene_target_s = ?, arrive_by_ms = ?,"
                " updated_ms = ?, note = COALESCE(?, note) WHERE id = ?",
                (
                    decision.station,
                    decision.on_scene_target_s,
                    now_ms + decision.on_scene_target_s * 1000,
                    now_ms,
                    note,
                    incident_id,
                ),
            )
            detail = _decision_detail(decision)
            log_step(cur, incident_id, now_ms, "dispatched", actor=actor, by_name=by_name, detail=detail)
            fanout.page_incident(
                cur,
                notify,
                self._core.building_names,
                incident_id,
                people=routing.by_names(notify, decision.members),
                why="dispatch",
                now_ms=now_ms,
            )
            incident_event(
                self._core, cur, "incident.dispatched", incident_id, now_ms, changes, extra={"dispatch": detail}
            )
        self._core.publish(changes)
        return changes, decision

    def arrive_incident(
        self,
        incident_id: int,
        *,
        actor: str,
        by_name: str | None = None,
        via: str = "api",
        note: str | None = None,
        now_ms: int,
    ) -> list[AlertChange]:
        """The station (or whoever was sent) is on scene: stops its clock, and acknowledges what was still raised."""
        changes: list[AlertChange] = []
        with self._core.tx() as cur:
            row = _load(cur, incident_id)
            if row["state"] not in _ARRIVE_FROM:
                raise InvalidIncidentTransition(incident_id, row["state"], "arrive")
            _ack_alerts(
                self._core, cur, _raised(cur, incident_id), by=by_name or actor, note=note, now_ms=now_ms, out=changes
            )
            cur.execute(
                "UPDATE incidents SET state = 'on_scene', arrive_by_ms = NULL, updated_ms = ?, note = COALESCE(?, note)"
                " WHERE id = ?",
                (now_ms, note, incident_id),
            )
            detail: dict[str, Any] = {"via": via}
            dispatched = _latest(cur, incident_id, "dispatched")
            if dispatched is not None:
                detail["elapsed_s"] = round((now_ms - dispatched) / 1000)
                detail["target_s"] = row["on_scene_target_s"]
            if note:
                detail["note"] = note
            log_step(cur, incident_id, now_ms, "on_scene", actor=actor, by_name=by_name, detail=detail)
            incident_event(self._core, cur, "incident.on_scene", incident_id, now_ms, changes)
        self._core.publish(changes)
        return changes

    def resolve_incident(
        self,
        incident_id: int,
        *,
        actor: str,
        by_name: str | None = None,
        cause: str,
        note: str | None = None,
        now_ms: int,
    ) -> list[AlertChange]:
        """Resolve every open alert of the incident with ``cause``, and close it."""
        if cause not in CAUSES:
            raise ValueError(f"cause must be one of {', '.join(CAUSES)}")
        changes: list[AlertChange] = []
        by = by_name or actor
        with self._core.tx() as cur:
            row = _load(cur, incident_id)
            if row["closed_ms"] is not None:
                raise InvalidIncidentTransition(incident_id, row["state"], "resolve")
            for alert_id in _open_alerts(cur, incident_id):
                cur.execute(
                    "UPDATE alerts SET state = 'resolved', open = 0, resolved_ms = ?, resolved_by = ?, cause = ?,"
                    " note = COALESCE(?, note), updated_ms = ?, escalate_at_ms = NULL WHERE id = ?",
                    (now_ms, by, cause, note, now_ms, alert_id),
                )
                audit(cur, alert_id, now_ms, "resolved", by, {"cause": cause, "note": note, "incident": incident_id})
                alert_event(self._core, cur, "alert.resolved", alert_id, now_ms, changes)
            cur.execute(
                "UPDATE incidents SET open_count = 0, closed_ms = ?, updated_ms = ?, state = 'resolved', cause = ?,"
                " note = COALESCE(?, note), arrive_by_ms = NULL WHERE id = ?",
                (now_ms, now_ms, cause, note, incident_id),
            )
            close(self._core, cur, incident_id, now_ms=now_ms, actor=actor, by_name=by_name, cause=cause, note=note)
            incident_event(self._core, cur, "incident.resolved", incident_id, now_ms, changes)
        self._core.publish(changes)
        return changes

    def set_external_ref(
        self, incident_id: int, *, actor: str, ref: str, system: str | None = None, now_ms: int
    ) -> IncidentRecord:
        """Attach the governance platform's own work-order id (it may then find the incident by it)."""
        with self._core.tx() as cur:
            _load(cur, incident_id)
            cur.execute(
                "UPDATE incidents SET external_ref = ?, updated_ms = ? WHERE id = ?", (ref, now_ms, incident_id)
            )
            log_step(cur, incident_id, now_ms, "external_ref", actor=actor, detail={"ref": ref, "system": system})
            row = cur.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            record = self._core.incident_record(row, facts=incident_facts(cur, incident_id))
            # The live views hear of it (the change log too); the webhooks do not (the platform that set it needs
            # no echo).
            change = AlertChange("incident.updated", None, incident_id, now_ms, record.payload(), record)
            self._core.note_change(change)
        self._core.publish([change])
        return record

    def _station_name(self, station_id: str | None) -> str | None:
        found = None if station_id is None else self._core.plan.station(station_id)
        return None if found is None else found.name


def committed(cur: Cursor | Connection) -> dict[str, int]:
    """Station id -> the open incident it is committed to (dispatched or on scene)."""
    rows = cur.execute(
        "SELECT station, MAX(id) FROM incidents WHERE station IS NOT NULL AND closed_ms IS NULL"
        " AND state IN ('dispatched', 'on_scene') GROUP BY station"
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def late_arrivals(
    core: Core, cur: TxCursor, now_ms: int, out: list[AlertChange], *, buildings: Collection[str] | None = None
) -> None:
    """Escalate every dispatched incident whose station is not on scene by its target: page the station leader and
    the duty officers, and put the breach on the timeline.  Each breach is escalated once.  ``buildings``: only
    their incidents (None: every building)."""
    scope, scoped = building_scope(buildings)
    rows = cur.execute(
        "SELECT * FROM incidents WHERE arrive_by_ms IS NOT NULL AND arrive_by_ms <= ?"
        + scope
        + " ORDER BY arrive_by_ms"
        + cur.for_update,
        (now_ms, *scoped),
    ).fetchall()
    for row in rows:
        incident_id = int(row["id"])
        cur.execute("UPDATE incidents SET arrive_by_ms = NULL, updated_ms = ? WHERE id = ?", (now_ms, incident_id))
        if row["state"] != "dispatched" or row["closed_ms"] is not None:
            continue
        target_s = int(row["on_scene_target_s"] or dispatch.DEFAULT_TARGET_S)
        dispatched = _latest(cur, incident_id, "dispatched")
        elapsed_s = round((now_ms - (dispatched if dispatched is not None else now_ms)) / 1000)
        station = None if row["station"] is None else core.plan.station(row["station"])
        log_step(
            cur,
            incident_id,
            now_ms,
            "on_scene_breach",
            actor="system",
            detail={"target_s": target_s, "elapsed_s": elapsed_s, "station": row["station"]},
        )
        names = [station.leader] if station is not None and station.leader else []
        people = routing.by_names(core.notify, names)
        people += [
            p
            for p in routing.duty_officers(core.notify, grid=row["grid"], building=row["building"])
            if p.name not in names
        ]
        paged = fanout.page_incident(
            cur, core.notify, core.building_names, incident_id, people=people, why="late", now_ms=now_ms
        )
        who = [p.name for p in people]
        reason = f"{row['station'] or 'the members sent'} not on scene within {target_s} s"
        log_step(cur, incident_id, now_ms, "escalated", actor="system", detail={"tier": "on_scene", "reason": reason})
        incident_event(
            core,
            cur,
            "incident.escalated",
            incident_id,
            now_ms,
            out,
            extra={"escalated_to": who, "paged": [p.name for p in paged], "reason": reason},
        )


def close(
    core: Core,
    cur: TxCursor,
    incident_id: int,
    *,
    now_ms: int,
    actor: str,
    by_name: str | None = None,
    cause: str | None,
    note: str | None,
) -> None:
    """What closing an incident does beside its row: nobody needs a page about an incident that is over, and the
    timeline says who ended it and why."""
    cur.execute(
        "UPDATE incidents SET state = 'resolved', arrive_by_ms = NULL, cause = COALESCE(cause, ?) WHERE id = ?",
        (cause, incident_id),
    )
    cur.execute(
        "UPDATE outbox SET state = 'cancelled', done_ms = ?, last_error = 'incident resolved'"
        " WHERE incident_id = ? AND channel IN ('sms', 'voice') AND state = 'pending'",
        (now_ms, incident_id),
    )
    log_step(cur, incident_id, now_ms, "resolved", actor=actor, by_name=by_name, detail={"cause": cause, "note": note})


def _load(cur: TxCursor, incident_id: int) -> Row:
    # FOR UPDATE on PostgreSQL: the state read here decides the step (see alerts.store.core).
    row = cur.execute("SELECT * FROM incidents WHERE id = ?" + cur.for_update, (incident_id,)).fetchone()
    if row is None:
        raise IncidentNotFound(incident_id)
    return row


def _raised(cur: TxCursor, incident_id: int) -> list[int]:
    rows = cur.execute(
        "SELECT id FROM alerts WHERE incident_id = ? AND state = 'raised' AND open = 1 ORDER BY id", (incident_id,)
    )
    return [int(r[0]) for r in rows]


def _open_alerts(cur: TxCursor, incident_id: int) -> list[int]:
    rows = cur.execute("SELECT id FROM alerts WHERE incident_id = ? AND open = 1 ORDER BY id", (incident_id,))
    return [int(r[0]) for r in rows]


def _ack_alerts(
    core: Core,
    cur: TxCursor,
    ids: Sequence[int],
    *,
    by: str,
    note: str | None,
    now_ms: int,
    out: list[AlertChange],
) -> None:
    for alert_id in ids:
        cur.execute(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_ms = ?, acknowledged_by = ?, updated_ms = ?,"
            " escalate_at_ms = NULL, note = COALESCE(?, note) WHERE id = ?",
            (now_ms, by, now_ms, note, alert_id),
        )
        audit(cur, alert_id, now_ms, "acknowledged", by, {"note": note})
        alert_event(core, cur, "alert.acknowledged", alert_id, now_ms, out)
    if ids:
        # Somebody answered: the voice calls still waiting for this incident are called off.
        incident_id = int(cur.execute("SELECT incident_id FROM alerts WHERE id = ?", (ids[0],)).fetchone()[0])
        cancel_calls(cur, incident_id, now_ms=now_ms, reason=f"acknowledged by {by}")


def _latest(cur: TxCursor, incident_id: int, action: str) -> int | None:
    """When the latest ``action`` step of the incident happened (a re-dispatch restarts the clock)."""
    row = cur.execute(
        "SELECT MAX(ts_ms) FROM incident_events WHERE incident_id = ? AND action = ?", (incident_id, action)
    ).fetchone()
    return None if row[0] is None else int(row[0])


def _note(note: str | None) -> dict[str, Any] | None:
    return None if note is None else {"note": note}


def _decision_detail(decision: dispatch.Decision) -> dict[str, Any]:
    return {
        "station": decision.station,
        "members": list(decision.members),
        "reason": decision.reason,
        "distance_m": decision.distance_m,
        "eta_s": decision.eta_s,
    }
