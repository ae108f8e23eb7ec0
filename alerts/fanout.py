"""Who gets told about what, and when: the webhooks and the governance platform an event goes to (``enqueue``), the
people an alert pages by SMS at each escalation tier (``page``), and when an unacknowledged fire escalates
(``escalate_at``).  The roster, routes and duty windows are read through :mod:`alerts.routing`.

``enqueue`` and ``page`` write outbox rows with the cursor of the store's transaction, so the notifications an
alert causes are durable together with the alert.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from alerts.config import NotifyConfig, WebhookConfig
from alerts.records import iso
from alerts.routing import Recipient, ack_timeout_s, recipients, tier_count
from rules.types import Severity

SEVERITY_ZH = {"fire": "火警", "supervisory": "监管告警", "trouble": "故障", "warning": "预警"}


def priority(severity: int, channel: str, *, news: bool = False) -> int:
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


def escalate_at(
    notify: NotifyConfig,
    severity: Severity,
    *,
    test: bool,
    drill: bool,
    grid: str | None,
    building: str,
    tier: int,
    now_ms: int,
) -> int | None:
    """When an unacknowledged alert at escalation tier ``tier`` goes to the next tier, or None: never."""
    # Fire escalates after notify.ack_timeout_s (or its route's own, shorter or longer); below fire only where a
    # route says so with its own ack_timeout_s (an extinguisher missing or obstructed, on a longer timeout), and
    # only when there is a next tier to go to.  Drills and test alerts never do: a drill must not wake the station
    # leader at 3 am.
    if test or drill:
        return None
    timeout_s = ack_timeout_s(notify, severity=severity, grid=grid, building=building)
    if timeout_s is None:
        return None
    tiers = tier_count(notify, severity=severity, grid=grid, building=building)
    if tier + 1 >= tiers:
        return None
    return now_ms + int(timeout_s * 1000)


def enqueue(
    cur: sqlite3.Cursor,
    notify: NotifyConfig,
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
    """Queue event ``event`` (webhook body ``data``) for the webhooks subscribed to it and the governance platform.
    Test alerts reach only the governance platform; drills only the drill webhooks (and governance if it wants
    them)."""
    body = orjson.dumps({"type": event, "timestamp": iso(now_ms), "data": data})
    rows: list[tuple[Any, ...]] = []
    endpoints: list[WebhookConfig] = []
    if not test:  # test alerts are recorded, never paged; only the governance platform mirrors them
        endpoints = notify.drill_receivers.webhooks if drill else notify.webhooks
    disabled = {r[0] for r in cur.execute("SELECT target FROM endpoints")} if endpoints else set()
    for hook in endpoints:
        if hook.url in disabled or severity < Severity.parse(hook.min_severity):
            continue
        if not any(_matches(p, event) for p in hook.events):
            continue
        rows.append(("webhook", hook.url, priority(severity, "webhook", news=news), None, None))
    gov = notify.governance
    if gov is not None and (not drill or gov.include_drills):
        rows.append(("governance", "governance", priority(severity, "governance", news=news), None, None))
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


def page(
    cur: sqlite3.Cursor,
    notify: NotifyConfig,
    building_names: Mapping[str, str],
    alert_id: int,
    *,
    tier: int,
    now_ms: int,
) -> list[str]:
    """Queue SMS for the alert's incident to the members of ``tier``: at most one per (incident, recipient) per
    update interval; a newer page for the same pair coalesces into the one still waiting."""
    sms = notify.sms
    row = cur.execute(
        "SELECT a.*, i.code AS code, i.alert_count AS incident_count FROM alerts a"
        " JOIN incidents i ON i.id = a.incident_id WHERE a.id = ?",
        (alert_id,),
    ).fetchone()
    severity = Severity(int(row["severity"]))
    people: list[Recipient]
    if row["drill"]:
        people = [
            Recipient(name=m.name, phone=m.phone, lang=m.lang, role="drill")
            for m in notify.drill_receivers.members
            if m.phone and tier == 0
        ]
    else:
        people = recipients(
            notify, tier=tier, severity=severity, grid=row["grid"], building=row["building"], now_ms=now_ms
        )
    if sms is None or not people:
        return [p.name for p in people]
    interval_ms = sms.update_interval_s * 1000
    incident_id = int(row["incident_id"])
    for person in people:
        params = {
            "building": building_names.get(row["building"], row["building"])[:20],
            "location": _location(row)[:20],
            "severity": SEVERITY_ZH[severity.label] if person.lang == "zh" else severity.label.upper(),
            "code": row["code"],
            "count": str(row["incident_count"]),
        }
        body = orjson.dumps({"lang": person.lang, "params": params, "tier": tier, "drill": bool(row["drill"])})
        dedup = f"sms:{incident_id}:{person.phone}"
        prio = priority(int(severity), "sms")
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
        msg_id = f"sms_{uuid.uuid4().hex}"
        cur.execute(
            "INSERT INTO outbox (msg_id, channel, target, event, priority, alert_id, incident_id, recipient,"
            " phone, body, state, next_ms, created_ms, dedup) VALUES (?,?,?,?,?,?,?,?,?,?,'pending',?,?,?)",
            (
                msg_id,
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
        _paged(cur, incident_id, now_ms, msg_id=msg_id, person=person, why=f"tier {tier}")
    return [p.name for p in people]


def page_incident(
    cur: sqlite3.Cursor,
    notify: NotifyConfig,
    building_names: Mapping[str, str],
    incident_id: int,
    *,
    people: Sequence[Recipient],
    why: str,
    now_ms: int,
) -> list[Recipient]:
    """Page ``people`` about an incident at once, whatever they were sent before (a dispatch, a late station): one
    SMS each with the incident's code, and a ``paged`` step on its timeline.  A drill pages the drill receivers
    instead: never a real member.  Returns who was paged."""
    sms = notify.sms
    row = cur.execute(
        "SELECT i.*, (SELECT a.id FROM alerts a WHERE a.incident_id = i.id ORDER BY a.severity DESC, a.id LIMIT 1)"
        " AS alert_id FROM incidents i WHERE i.id = ?",
        (incident_id,),
    ).fetchone()
    if row["drill"]:
        people = [
            Recipient(name=m.name, phone=m.phone, lang=m.lang, role="drill")
            for m in notify.drill_receivers.members
            if m.phone
        ]
    alert = None
    if row["alert_id"] is not None:
        alert = cur.execute("SELECT floor, device FROM alerts WHERE id = ?", (row["alert_id"],)).fetchone()
    severity = Severity(int(row["severity"]))
    paged: list[Recipient] = []
    for person in people:
        if sms is None:
            _paged(cur, incident_id, now_ms, msg_id=None, person=person, why=why, channel="none")
            continue
        params = {
            "building": building_names.get(row["building"], row["building"])[:20],
            "location": (_location(alert) if alert is not None else "")[:20],
            "severity": SEVERITY_ZH[severity.label] if person.lang == "zh" else severity.label.upper(),
            "code": row["code"],
            "count": str(row["alert_count"]),
        }
        body = orjson.dumps({"lang": person.lang, "params": params, "tier": why, "drill": bool(row["drill"])})
        msg_id = f"sms_{uuid.uuid4().hex}"
        # One page per (incident, person, reason) at a time: a second dispatch while the first page still waits
        # carries the newer picture instead of queueing another.
        dedup = f"{why}:{incident_id}:{person.phone}"
        cur.execute(
            "UPDATE outbox SET body = ? WHERE dedup = ? AND state = 'pending'",
            (body, dedup),
        )
        if cur.rowcount:
            continue
        cur.execute(
            "INSERT INTO outbox (msg_id, channel, target, event, priority, alert_id, incident_id, recipient,"
            " phone, body, state, next_ms, created_ms, dedup) VALUES (?,?,?,?,?,?,?,?,?,?,'pending',?,?,?)",
            (
                msg_id,
                "sms",
                "sms",
                "sms.page",
                priority(int(severity), "sms", news=True),
                row["alert_id"],
                incident_id,
                person.name,
                person.phone,
                body,
                now_ms,
                now_ms,
                dedup,
            ),
        )
        cur.execute(
            "INSERT INTO pages (incident_id, phone, severity, last_ms) VALUES (?,?,?,?)"
            " ON CONFLICT(incident_id, phone) DO UPDATE SET severity = MAX(severity, excluded.severity),"
            " last_ms = excluded.last_ms",
            (incident_id, person.phone, int(severity), now_ms),
        )
        _paged(cur, incident_id, now_ms, msg_id=msg_id, person=person, why=why)
        paged.append(person)
    return paged


def mask_phone(phone: str) -> str:
    """``+8613800000001`` -> ``+86138****0001``: enough to tell numbers apart on a timeline, not to dial them."""
    return phone[:-8] + "****" + phone[-4:] if len(phone) > 8 else "****"


def _paged(
    cur: sqlite3.Cursor,
    incident_id: int,
    now_ms: int,
    *,
    msg_id: str | None,
    person: Recipient,
    why: str,
    channel: str = "sms",
) -> None:
    detail = {"channel": channel, "recipient": person.name, "phone": mask_phone(person.phone), "msg_id": msg_id}
    cur.execute(
        "INSERT INTO incident_events (incident_id, ts_ms, action, actor, by_name, detail) VALUES (?,?,?,?,?,?)",
        (incident_id, now_ms, "paged", "system", None, orjson.dumps({**detail, "reason": why}).decode()),
    )
