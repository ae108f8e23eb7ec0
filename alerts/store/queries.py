"""Reading the store: one alert with its audit trail and evidence, listings with the filters the API scopes by,
the open alerts (for restoring the engine and the dashboard), an open incident by its SMS reply code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import orjson

from alerts.records import (
    ALERT_COLUMNS,
    AlertDetail,
    AlertRecord,
    AuditEntry,
    IncidentDetail,
    IncidentEvent,
    IncidentRecord,
)
from alerts.store.core import ALERT_FROM, ALERT_WITH_CODE, Core, incident_facts
from alerts.store.incidents import committed
from rules.types import Evidence, Severity


class Queries:
    """The store's reads (a part of :class:`~alerts.store.AlertStore`)."""

    _core: Core

    def incident_by_code(self, code: str) -> IncidentRecord | None:
        with self._core.lock:
            row = self._core.db.execute(
                "SELECT * FROM incidents WHERE code = ? AND closed_ms IS NULL ORDER BY id DESC LIMIT 1", (code,)
            ).fetchone()
        return None if row is None else self._core.incident_record(row)

    def incident_by_ref(self, ref: str) -> IncidentRecord | None:
        """The newest incident carrying the governance platform's work-order id ``ref``."""
        with self._core.lock:
            row = self._core.db.execute(
                "SELECT * FROM incidents WHERE external_ref = ? ORDER BY id DESC LIMIT 1", (ref,)
            ).fetchone()
        return None if row is None else self._core.incident_record(row)

    def committed_stations(self) -> dict[str, int]:
        """Station id -> the open incident it is dispatched to or on scene at."""
        with self._core.lock:
            return committed(self._core.db)

    def get_incident(self, incident_id: int) -> IncidentDetail | None:
        """One incident with its alerts (each with its audit trail and evidence) and its timeline."""
        with self._core.lock:
            row = self._core.db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                return None
            ids = [
                r[0]
                for r in self._core.db.execute(
                    "SELECT id FROM alerts WHERE incident_id = ? ORDER BY id LIMIT 1000", (incident_id,)
                )
            ]
            alerts = [a for a in map(self.get_alert, ids) if a is not None]
            facts = incident_facts(self._core.db, incident_id)
            steps = self._core.db.execute(
                "SELECT * FROM incident_events WHERE incident_id = ? ORDER BY id LIMIT 5000", (incident_id,)
            ).fetchall()
        record = self._core.incident_record(row, tuple(ids), facts)
        return IncidentDetail(record, tuple(alerts), tuple(IncidentEvent.from_row(s) for s in steps))

    def get_alert(self, alert_id: int) -> AlertDetail | None:
        """One alert with its audit trail and evidence."""
        with self._core.lock:
            row = self._core.db.execute(
                f"SELECT {ALERT_COLUMNS}, a.evidence {ALERT_FROM} WHERE a.id = ?",
                (alert_id,),
            ).fetchone()
            if row is None:
                return None
            audit = self._core.db.execute(
                "SELECT ts_ms, action, by, detail FROM audit WHERE alert_id = ? ORDER BY id", (alert_id,)
            ).fetchall()
        *columns, evidence = row
        fields = AlertRecord.fields_from_row(columns, building_name=self._core.building_name(row["building"]))
        trail = tuple(AuditEntry.from_row(a) for a in audit)
        return AlertDetail(*(*fields, trail, tuple(Evidence(**e) for e in orjson.loads(evidence))))

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
            where.append(f"a.{column} IN ({','.join('?' * len(values))})" if values else "1 = 0")
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
        sql = ALERT_WITH_CODE
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += (
            " ORDER BY a.severity DESC, a.id DESC LIMIT ? OFFSET ?"
            if open_only
            else " ORDER BY a.id DESC LIMIT ? OFFSET ?"
        )
        args += [max(0, min(limit, 10_000)), max(0, offset)]
        with self._core.lock:
            rows = self._core.db.execute(sql, args).fetchall()
        return [self._core.alert_record(r) for r in rows]

    def list_incidents(
        self,
        *,
        state: Literal["open", "resolved"] | None = None,
        building: str | Sequence[str] | None = None,
        grid: str | Sequence[str] | None = None,
        since_ms: int | None = None,
        external_ref: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[IncidentRecord]:
        where: list[str] = []
        args: list[Any] = []
        if external_ref is not None:
            where.append("external_ref = ?")
            args.append(external_ref)
        if state == "open":
            where.append("closed_ms IS NULL")
        elif state == "resolved":
            where.append("closed_ms IS NOT NULL")
        for column, value in (("building", building), ("grid", grid)):
            if value is not None:
                values = [value] if isinstance(value, str) else list(value)
                where.append(f"{column} IN ({','.join('?' * len(values))})" if values else "1 = 0")
                args.extend(values)
        if since_ms is not None:
            where.append("updated_ms >= ?")
            args.append(since_ms)
        sql = "SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        args += [max(0, min(limit, 10_000)), max(0, offset)]
        with self._core.lock:
            rows = self._core.db.execute(sql, args).fetchall()
        out = []
        for r in rows:
            with self._core.lock:
                ids = tuple(
                    x[0]
                    for x in self._core.db.execute(
                        "SELECT id FROM alerts WHERE incident_id = ? ORDER BY id LIMIT 1000", (r["id"],)
                    )
                )
                facts = incident_facts(self._core.db, int(r["id"]))
            out.append(self._core.incident_record(r, ids, facts))
        return out

    def active_alerts(self) -> list[AlertRecord]:
        """Every open (not yet resolved) alert, fire first: for restoring the engine and the dashboard."""
        return self.list_alerts(open_only=True, limit=10_000)
