"""An alert or incident event inside the store's transaction: render the webhook ``data`` from the record as it now
stands, queue it for whoever :mod:`alerts.fanout` says hears of it, and collect the change for the listeners (told
after the commit)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alerts import fanout
from alerts.records import AlertChange, AlertRecord, IncidentRecord
from alerts.store.core import ALERT_WITH_CODE, Core, TxCursor, incident_facts


def alert_event(
    core: Core,
    cur: TxCursor,
    event: str,
    alert_id: int,
    now_ms: int,
    out: list[AlertChange],
    extra: Mapping[str, Any] | None = None,
    *,
    news: bool = False,
) -> None:
    row = cur.execute(ALERT_WITH_CODE + " WHERE a.id = ?", (alert_id,)).fetchone()
    record = core.alert_record(row)
    data = record.payload()
    if extra:
        data.update(extra)
    news = news or event == "alert.escalated"
    _emit(core, cur, event, record, data, test=record.test, now_ms=now_ms, news=news, out=out)


def incident_event(
    core: Core,
    cur: TxCursor,
    event: str,
    incident_id: int,
    now_ms: int,
    out: list[AlertChange],
    *,
    test: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """``test``: whether the alert behind the event is a test (an incident itself is never one).  Every event but
    ``incident.updated`` (the one that repeats as an incident grows) carries the incident's alerts: a work order
    for the governance platform is the incident with what it is made of."""
    row = cur.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
    record = core.incident_record(row, facts=incident_facts(cur, incident_id))
    data = record.payload()
    if event != "incident.updated":
        rows = cur.execute(ALERT_WITH_CODE + " WHERE a.incident_id = ? ORDER BY a.id LIMIT 1000", (incident_id,))
        data["alerts"] = [core.alert_record(r).payload() for r in rows.fetchall()]
    if extra:
        data.update(extra)
    news = event in ("incident.opened", "incident.escalated", "incident.dispatched")
    _emit(core, cur, event, record, data, test=test, now_ms=now_ms, news=news, out=out)


def _emit(
    core: Core,
    cur: TxCursor,
    event: str,
    record: AlertRecord | IncidentRecord,
    data: dict[str, Any],
    *,
    test: bool,
    now_ms: int,
    news: bool,
    out: list[AlertChange],
) -> None:
    alert_id = record.id if isinstance(record, AlertRecord) else None
    incident_id = record.incident_id if isinstance(record, AlertRecord) else record.id
    fanout.enqueue(
        cur,
        core.notify,
        event,
        data,
        severity=int(record.severity),
        drill=record.drill,
        test=test,
        alert_id=alert_id,
        incident_id=incident_id,
        now_ms=now_ms,
        news=news,
    )
    if not test:
        fanout.tell_robots(cur, core.notify, core.building_names, event, incident_id, now_ms=now_ms)
    change = AlertChange(event, alert_id, incident_id, now_ms, data, record)
    core.note_change(change)  # the change log, written with this transaction (alerts.store.core)
    out.append(change)
