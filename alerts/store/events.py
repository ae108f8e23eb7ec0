"""An alert or incident event inside the store's transaction: render the webhook ``data`` from the record as it now
stands, queue it for whoever :mod:`alerts.fanout` says hears of it, and collect the change for the listeners (told
after the commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from alerts import fanout
from alerts.records import AlertChange
from alerts.store.core import ALERT_WITH_CODE, Core


def alert_event(
    core: Core,
    cur: sqlite3.Cursor,
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
    fanout.enqueue(
        cur,
        core.notify,
        event,
        data,
        severity=int(record.severity),
        drill=record.drill,
        test=record.test,
        alert_id=alert_id,
        incident_id=record.incident_id,
        now_ms=now_ms,
        news=news or event == "alert.escalated",
    )
    out.append(AlertChange(event, alert_id, record.incident_id, now_ms, data, record))


def incident_event(
    core: Core,
    cur: sqlite3.Cursor,
    event: str,
    incident_id: int,
    now_ms: int,
    out: list[AlertChange],
    *,
    test: bool = False,
) -> None:
    row = cur.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
    record = core.incident_record(row)
    data = record.payload()
    fanout.enqueue(
        cur,
        core.notify,
        event,
        data,
        severity=int(record.severity),
        drill=record.drill,
        test=test,
        alert_id=None,
        incident_id=incident_id,
        now_ms=now_ms,
        news=event == "incident.opened",
    )
    out.append(AlertChange(event, None, incident_id, now_ms, data, record))
