"""What a paged person reports from an action link beside the duty room's steps: "on my way" (``en_route``), a
step on the incident's timeline under that person's name."""

from __future__ import annotations

from alerts.records import AlertChange
from alerts.store.core import Core, log_step
from alerts.store.errors import IncidentNotFound
from alerts.store.events import incident_event


class Responders:
    """A part of :class:`~alerts.store.AlertStore`."""

    _core: Core

    def en_route(
        self, incident_id: int, *, actor: str, by_name: str | None, via: str, now_ms: int
    ) -> list[AlertChange]:
        changes: list[AlertChange] = []
        with self._core.tx() as cur:
            row = cur.execute("SELECT closed_ms FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                raise IncidentNotFound(incident_id)
            log_step(cur, incident_id, now_ms, "en_route", actor=actor, by_name=by_name, detail={"via": via})
            cur.execute("UPDATE incidents SET updated_ms = ? WHERE id = ?", (now_ms, incident_id))
            incident_event(self._core, cur, "incident.updated", incident_id, now_ms, changes)
        self._core.publish(changes)
        return changes
