"""Reading a period's incidents and alerts for the figures (:mod:`alerts.figures`), and the audit trail for export.

Each step of an incident is taken from the incident's own event trail (``incident_events``: acknowledged,
dispatched, on_scene, resolved, escalated) and, for a step the trail does not have, from its alerts' columns and
audit trail (an incident handled alert by alert: the first alert acknowledged is the incident acknowledged).  So a
store written before incidents had a lifecycle of their own still gives every figure it can.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from alerts.figures import AlertFacts, IncidentFacts
from alerts.store.core import Core
from common.db import Row
from rules.types import Severity

# Per incident: the first time of each step from its events, else from its alerts.
_INCIDENTS = """
SELECT i.id, i.building, i.grid, i.station, i.drill, i.severity, i.opened_ms,
  (SELECT MIN(test) FROM alerts WHERE incident_id = i.id) AS test,
  COALESCE((SELECT MIN(ts_ms) FROM incident_events WHERE incident_id = i.id AND action = 'acknowledged'),
           (SELECT MIN(acknowledged_ms) FROM alerts WHERE incident_id = i.id)) AS ack,
  COALESCE((SELECT MIN(ts_ms) FROM incident_events WHERE incident_id = i.id AND action = 'dispatched'),
           (SELECT MIN(dispatched_ms) FROM alerts WHERE incident_id = i.id)) AS dispatched,
  (SELECT MIN(ts_ms) FROM incident_events WHERE incident_id = i.id AND action = 'on_scene') AS on_scene,
  COALESCE((SELECT MIN(ts_ms) FROM incident_events WHERE incident_id = i.id AND action = 'resolved'),
           i.closed_ms) AS resolved,
  COALESCE(i.cause, (SELECT cause FROM alerts WHERE incident_id = i.id AND cause IS NOT NULL
                     ORDER BY cause = 'real_fire' DESC, id LIMIT 1)) AS cause,
  COALESCE(NULLIF((SELECT COUNT(*) FROM incident_events WHERE incident_id = i.id AND action = 'escalated'), 0),
           (SELECT COUNT(*) FROM audit au JOIN alerts a ON a.id = au.alert_id
             WHERE a.incident_id = i.id AND au.action = 'escalated')) AS escalations
FROM incidents i
WHERE i.opened_ms >= ? AND i.opened_ms < ?
"""

# Alerts raised in the period, and those raised before it that were still going when it began.
_ALERTS = """
SELECT id, incident_id, building, grid, device, rule, severity, drill, test, raised_ms, cleared_ms, resolved_ms, cause
FROM alerts
WHERE raised_ms < ? AND (cleared_ms IS NULL OR cleared_ms >= ?) AND (resolved_ms IS NULL OR resolved_ms >= ?)
"""


@dataclass(frozen=True, slots=True)
class PeriodFacts:
    incidents: tuple[IncidentFacts, ...]
    alerts: tuple[AlertFacts, ...]


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One line of the audit export: an alert's or an incident's step."""

    ts_ms: int
    kind: str  # "alert" | "incident"
    subject_id: int
    incident_id: int | None
    building: str
    grid: str | None
    action: str
    by: str | None
    detail: str | None


def _scope(column: str, buildings: Sequence[str] | None, grid: str | None) -> tuple[str, list[Any]]:
    sql = ""
    args: list[Any] = []
    if buildings is not None:
        sql += f" AND {column}building IN ({','.join('?' * len(buildings))})" if buildings else " AND 1 = 0"
        args.extend(buildings)
    if grid is not None:
        sql += f" AND {column}grid = ?"
        args.append(grid)
    return sql, args


class Reports:
    """The store's reads for figures and exports (a part of :class:`~alerts.store.AlertStore`)."""

    _core: Core

    def period_facts(
        self,
        *,
        start_ms: int,
        end_ms: int,
        buildings: Sequence[str] | None = None,
        grid: str | None = None,
    ) -> PeriodFacts:
        """The incidents raised in ``[start_ms, end_ms)`` and the alerts whose life overlaps it, in the given
        buildings (None: every one) and grid."""
        where_i, args_i = _scope("i.", buildings, grid)
        where_a, args_a = _scope("", buildings, grid)
        with self._core.lock:
            incident_rows = self._core.db.execute(
                _INCIDENTS + where_i + " ORDER BY i.id", (start_ms, end_ms, *args_i)
            ).fetchall()
            alert_rows = self._core.db.execute(
                _ALERTS + where_a + " ORDER BY id", (end_ms, start_ms, start_ms, *args_a)
            ).fetchall()
        return PeriodFacts(tuple(map(_incident, incident_rows)), tuple(map(_alert, alert_rows)))

    def audit_rows(
        self, *, start_ms: int, end_ms: int, buildings: Sequence[str] | None = None, grid: str | None = None
    ) -> Iterator[AuditRow]:
        """Every audit step of alerts and incidents in ``[start_ms, end_ms)``, oldest first, read in pages of
        5,000 so an export of a year does not hold the store's lock (or the memory) for all of it at once."""
        where, args = _scope("a.", buildings, grid)
        where_i, args_i = _scope("i.", buildings, grid)
        sql = (
            "SELECT * FROM ("
            " SELECT au.ts_ms, 'alert' AS kind, au.alert_id AS subject, a.incident_id, a.building, a.grid,"
            " au.action, au.by, au.detail, au.id AS seq FROM audit au JOIN alerts a ON a.id = au.alert_id"
            f" WHERE au.ts_ms >= ? AND au.ts_ms < ?{where}"
            " UNION ALL"
            " SELECT e.ts_ms, 'incident', e.incident_id, e.incident_id, i.building, i.grid, e.action,"
            " COALESCE(e.by_name, e.actor), e.detail, e.id FROM incident_events e JOIN incidents i"
            f" ON i.id = e.incident_id WHERE e.ts_ms >= ? AND e.ts_ms < ?{where_i}"
            ") AS steps WHERE (ts_ms, kind, seq) > (?, ?, ?) ORDER BY ts_ms, kind, seq LIMIT 5000"
        )
        after: tuple[int, str, int] = (-1, "", -1)
        while True:
            with self._core.lock:
                rows = self._core.db.execute(
                    sql, (start_ms, end_ms, *args, start_ms, end_ms, *args_i, *after)
                ).fetchall()
            for r in rows:
                yield AuditRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])
            if len(rows) < 5000:
                return
            last = rows[-1]
            after = (int(last[0]), str(last[1]), int(last[9]))


def _incident(r: Row) -> IncidentFacts:
    return IncidentFacts(
        id=r["id"],
        building=r["building"],
        grid=r["grid"],
        station=r["station"],
        drill=bool(r["drill"]),
        test=bool(r["test"]),
        severity=Severity(r["severity"]),
        raised_ms=r["opened_ms"],
        acknowledged_ms=r["ack"],
        dispatched_ms=r["dispatched"],
        on_scene_ms=r["on_scene"],
        resolved_ms=r["resolved"],
        cause=r["cause"],
        escalations=int(r["escalations"] or 0),
    )


def _alert(r: Row) -> AlertFacts:
    return AlertFacts(
        id=r["id"],
        incident_id=r["incident_id"],
        building=r["building"],
        grid=r["grid"],
        device=r["device"],
        rule=r["rule"],
        severity=Severity(r["severity"]),
        drill=bool(r["drill"]),
        test=bool(r["test"]),
        raised_ms=r["raised_ms"],
        cleared_ms=r["cleared_ms"],
        resolved_ms=r["resolved_ms"],
        cause=r["cause"],
    )
