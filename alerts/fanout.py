"""Who gets told about what, and when: the webhooks and the governance platform an event goes to (``enqueue``), the
people an alert pages by SMS at each escalation tier (``page``), and when an unacknowledged fire escalates
(``escalate_at``).  The roster, routes and duty windows are read through :mod:`alerts.routing`.

``enqueue`` and ``page`` write outbox rows with the cursor of the store's transaction, so the notifications an
alert causes are durable together with the alert.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from alerts.config import NotifyConfig, WebhookConfig
from alerts.links import link_for
from alerts.records import iso
from alerts.robots.render import IncidentUpdate
from alerts.routing import Recipient, ack_timeout_s, recipients, robots_for, tier_count, voice_tier
from common.db import Cursor, Row
from rules.types import Severity


class OutboxCursor(Cursor, Protocol):
    """The cursor of the store's write transaction (``alerts.store.core.TxCursor``): it learns of every outbox row
    the transaction inserts, which it hands to the notifier after the commit."""

    def outbox_added(self, item_id: int, priority: int) -> None: ...


# Two-argument MAX/MIN are SQLite's; CASE is everyone's.  (``pages.severity``, qualified: in an upsert PostgreSQL
# would find the bare name ambiguous with ``excluded``.)
_RAISE_PRIORITY = "priority = CASE WHEN priority < ? THEN ? ELSE priority END"
_KEEP_WORST_PAGE = (
    "severity = CASE WHEN excluded.severity > pages.severity THEN excluded.severity ELSE pages.severity END"
)


def insert_outbox(
    cur: OutboxCursor,
    *,
    msg_id: str,
    channel: str,
    target: str,
    event: str,
    priority: int,
    alert_id: int | None,
    incident_id: int | None,
    recipient: str | None,
    phone: str | None,
    body: bytes,
    next_ms: int,
    created_ms: int,
    dedup: str | None,
    building: str | None,
) -> int:
    """One pending outbox row; its id (from ``RETURNING``, which the hand-off needs on PostgreSQL, where ids of
    concurrent transactions commit out of order).  ``building``: whose gateway drains it in cluster mode."""
    row = cur.execute(
        "INSERT INTO outbox (msg_id, channel, target, event, priority, alert_id, incident_id, recipient, phone,"
        " body, state, next_ms, created_ms, dedup, building) VALUES (?,?,?,?,?,?,?,?,?,?,'pending',?,?,?,?)"
        " RETURNING id",
        (
            msg_id,
            channel,
            target,
            event,
            priority,
            alert_id,
            incident_id,
            recipient,
            phone,
            body,
            next_ms,
            created_ms,
            dedup,
            building,
        ),
    ).fetchone()
    item_id = int(row[0])
    cur.outbox_added(item_id, priority)
    return item_id


SEVERITY_ZH = {"fire": "火警", "supervisory": "监管告警", "trouble": "故障", "warning": "预警"}


def priority(severity: int, channel: str, *, news: bool = False) -> int:
    # Severity dominates (fire first, always).  Within a severity, news first: the first alert of a new incident
    # (and an escalation) overtakes the 199 followers of a smoky stairwell already reported.
    return (
        severity * 10
        + (5 if news else 0)
        + {"voice": 4, "sms": 3, "robot": 3, "governance": 2, "webhook": 1}.get(channel, 0)
    )


def _matches(pattern: str, event: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event.startswith(pattern[:-1])
    return pattern == event


def _location(row: Row) -> str:
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
    cur: OutboxCursor,
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
                f"UPDATE outbox SET body = ?, {_RAISE_PRIORITY} WHERE dedup = ? AND state = 'pending'",
                (body, row[2], row[2], dedup),
            )
            if cur.rowcount == 0:
                fresh.append((*row, dedup))
        rows_d = fresh
    else:
        rows_d = [(*row, None) for row in rows]
    building = data.get("building")
    for ch, target, prio, rcp, phone, dedup in rows_d:
        insert_outbox(
            cur,
            msg_id=f"msg_{uuid.uuid4().hex}",
            channel=ch,
            target=target,
            event=event,
            priority=prio,
            alert_id=alert_id,
            incident_id=incident_id,
            recipient=rcp,
            phone=phone,
            body=body,
            next_ms=now_ms,
            created_ms=now_ms,
            dedup=dedup,
            building=None if building is None else str(building),
        )


def _params(row: Row, building_names: Mapping[str, str], lang: str) -> dict[str, str]:
    severity = Severity(int(row["severity"]))
    return {
        "building": building_names.get(row["building"], row["building"])[:20],
        "location": _location(row)[:20],
        "severity": SEVERITY_ZH[severity.label] if lang == "zh" else severity.label.upper(),
        "code": row["code"],
        "count": str(row["incident_count"]),
    }


def _add_link(
    params: dict[str, str], notify: NotifyConfig, person: Recipient, incident_id: int, *, now_ms: int
) -> None:
    """The person's action link, for an SMS template that carries ``{link}`` (a template without one is sent
    exactly as before: an approved provider template must not receive a variable it does not have)."""
    sms = notify.sms
    if notify.links is None or sms is None:
        return
    template = sms.templates.get(person.lang) or next(iter(sms.templates.values()))  # type: ignore[call-overload]
    if "{link}" in template.text or "link" in template.params:
        params["link"] = link_for(notify.links, incident_id=incident_id, recipient=person.name, now_ms=now_ms)


def call(
    cur: OutboxCursor,
    notify: NotifyConfig,
    building_names: Mapping[str, str],
    row: Row,
    people: list[Recipient],
    *,
    tier: int,
    now_ms: int,
) -> None:
    """Queue a voice call to each of ``people`` about the alert ``row`` (joined with its incident's code and count):
    at most one per (incident, person, escalation step), however often the step is reached."""
    incident_id = int(row["incident_id"])
    prio = priority(int(row["severity"]), "voice", news=True)
    for person in people:
        key = f"voice:{incident_id}:{person.phone}:{tier}"
        # Checked in every state, not only pending: a call that went out is not repeated at the same step.
        if cur.execute("SELECT 1 FROM outbox WHERE channel = 'voice' AND dedup = ?", (key,)).fetchone() is not None:
            continue
        body = orjson.dumps({"lang": person.lang, "params": _params(row, building_names, person.lang), "tier": tier})
        msg_id = f"voice_{uuid.uuid4().hex}"
        _paged(cur, incident_id, now_ms, msg_id=msg_id, person=person, why=f"tier {tier}", channel="voice")
        insert_outbox(
            cur,
            msg_id=msg_id,
            channel="voice",
            target="voice",
            event="voice.call",
            priority=prio,
            alert_id=int(row["id"]),
            incident_id=incident_id,
            recipient=person.name,
            phone=person.phone,
            body=body,
            next_ms=now_ms,
            created_ms=now_ms,
            dedup=key,
            building=str(row["building"]),
        )


def page(
    cur: OutboxCursor,
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
    if people and not row["drill"] and notify.voice is not None:
        if voice_tier(notify, tier=tier, severity=severity, grid=row["grid"], building=row["building"]):
            call(cur, notify, building_names, row, people, tier=tier, now_ms=now_ms)
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
        _add_link(params, notify, person, incident_id, now_ms=now_ms)
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
                f"UPDATE outbox SET body = ?, {_RAISE_PRIORITY}, alert_id = ? WHERE id = ?",
                (body, prio, prio, alert_id, waiting["id"]),
            )
            cur.execute(
                "UPDATE pages SET severity = CASE WHEN severity < ? THEN ? ELSE severity END"
                " WHERE incident_id = ? AND phone = ?",
                (int(severity), int(severity), incident_id, person.phone),
            )
            continue
        if page is not None and int(page["severity"]) >= int(severity):
            continue  # this person already has this incident at this severity
        send_at = now_ms if page is None else max(now_ms, int(page["last_ms"]) + interval_ms)
        msg_id = f"sms_{uuid.uuid4().hex}"
        insert_outbox(
            cur,
            msg_id=msg_id,
            channel="sms",
            target="sms",
            event="sms.page",
            priority=prio,
            alert_id=alert_id,
            incident_id=incident_id,
            recipient=person.name,
            phone=person.phone,
            body=body,
            next_ms=send_at,
            created_ms=now_ms,
            dedup=dedup,
            building=str(row["building"]),
        )
        cur.execute(
            "INSERT INTO pages (incident_id, phone, severity, last_ms) VALUES (?,?,?,?)"
            f" ON CONFLICT(incident_id, phone) DO UPDATE SET {_KEEP_WORST_PAGE},"
            " last_ms = excluded.last_ms",
            (incident_id, person.phone, int(severity), send_at),
        )
        _paged(cur, incident_id, now_ms, msg_id=msg_id, person=person, why=f"tier {tier}")
    return [p.name for p in people]


def page_incident(
    cur: OutboxCursor,
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
        _add_link(params, notify, person, incident_id, now_ms=now_ms)
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
        insert_outbox(
            cur,
            msg_id=msg_id,
            channel="sms",
            target="sms",
            event="sms.page",
            priority=priority(int(severity), "sms", news=True),
            alert_id=row["alert_id"],
            incident_id=incident_id,
            recipient=person.name,
            phone=person.phone,
            body=body,
            next_ms=now_ms,
            created_ms=now_ms,
            dedup=dedup,
            building=str(row["building"]),
        )
        cur.execute(
            "INSERT INTO pages (incident_id, phone, severity, last_ms) VALUES (?,?,?,?)"
            f" ON CONFLICT(incident_id, phone) DO UPDATE SET {_KEEP_WORST_PAGE},"
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
    cur: OutboxCursor,
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


# Which incident update an event is, for the group robots (None: the status as it now stands).
ROBOT_STATUS: dict[str, str | None] = {
    "incident.opened": "raised",
    "incident.updated": None,  # grown or worse
    "incident.acknowledged": "acknowledged",
    "incident.dispatched": "dispatched",
    "incident.on_scene": "on_scene",
    "incident.escalated": "escalated",
    "incident.resolved": "resolved",
    # The single-detector steps (an alert acknowledged, dispatched on its own) move the incident too.
    "alert.acknowledged": None,
    "alert.dispatched": None,
}


def _status_now(cur: OutboxCursor, incident: Row) -> str:
    if incident["closed_ms"] is not None:
        return "resolved"
    if incident["state"] in ("dispatched", "on_scene", "resolved"):
        return str(incident["state"])
    states = {
        r[0] for r in cur.execute("SELECT state FROM alerts WHERE incident_id = ? AND open = 1", (incident["id"],))
    }
    if "dispatched" in states:
        return "dispatched"  # an alert dispatched on its own
    if incident["state"] == "acknowledged" or (states and "raised" not in states):
        return "acknowledged"
    return "raised"


def _by(cur: OutboxCursor, incident_id: int, status: str, alerts: Sequence[Row]) -> str | None:
    """Who took the step ``status`` reports: the incident's timeline, else the alert that took it alone."""
    step = cur.execute(
        "SELECT actor, by_name, detail FROM incident_events WHERE incident_id = ? AND action = ?"
        " ORDER BY id DESC LIMIT 1",
        (incident_id, status),
    ).fetchone()
    if step is not None:
        who = step["by_name"] or step["actor"]
        detail = orjson.loads(step["detail"]) if step["detail"] else {}
        station = detail.get("station") if isinstance(detail, dict) else None
        if status == "dispatched" and station:
            return f"{who} → {station}" if who and who != "system" else str(station)
        return None if who == "system" else who
    column = {"acknowledged": "acknowledged_by", "dispatched": "dispatched_to", "resolved": "resolved_by"}.get(status)
    if column is None:
        return None
    return next((a[column] for a in reversed(alerts) if a[column]), None)


def tell_robots(
    cur: OutboxCursor,
    notify: NotifyConfig,
    building_names: Mapping[str, str],
    event: str,
    incident_id: int,
    *,
    now_ms: int,
    by: str | None = None,
) -> list[str]:
    """Queue one message per robot about incident ``incident_id`` after ``event``: the robots of every escalation
    tier the incident has reached.  A newer update coalesces into the message still waiting for the same robot, so
    an incident that grows by 200 detectors is one message, and a robot at its rate limit gets the newest picture
    when its window opens.  Test alerts never reach a group; drills only the drill robots
    (``notify.drill_receivers.robots``)."""
    if event not in ROBOT_STATUS or not notify.robots:
        return []
    incident = cur.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
    if incident is None or (incident["drill"] and not notify.drill_receivers.robots):
        return []
    alerts = cur.execute(
        "SELECT floor, device, tier, test, acknowledged_by, dispatched_to, resolved_by, cause FROM alerts"
        " WHERE incident_id = ? ORDER BY id",
        (incident_id,),
    ).fetchall()
    real = [a for a in alerts if not a["test"]]
    if not real:
        return []
    tier = max(int(a["tier"]) for a in real)
    severity = Severity(int(incident["severity"]))
    if incident["drill"]:
        names = list(notify.drill_receivers.robots)  # a drill reaches only the drill robots, marked as a drill
    else:
        names = robots_for(notify, tier=tier, severity=severity, grid=incident["grid"], building=incident["building"])
    if not names:
        return []
    status = ROBOT_STATUS[event] or _status_now(cur, incident)
    by = by or _by(cur, incident_id, status, real)
    floors = sorted({int(a["floor"]) for a in real if a["floor"] is not None})
    devices = [str(a["device"]) for a in real if a["device"]]
    news = status != "raised" or event == "incident.opened"
    prio = priority(int(severity), "robot", news=news)
    by_name = {r.name: r for r in notify.robots}
    for name in names:
        robot = by_name[name]
        link = None
        if notify.links is not None and robot.links and status != "resolved":
            link = link_for(notify.links, incident_id=incident_id, recipient=robot.target, now_ms=now_ms)
        update = IncidentUpdate(
            status=status,
            incident_id=incident_id,
            code=str(incident["code"]),
            building=str(incident["building"]),
            building_name=building_names.get(incident["building"], incident["building"]),
            severity=severity.label,
            floors=tuple(floors),
            devices=tuple(devices[:5]),
            alert_count=len(real),
            opened_ms=int(incident["opened_ms"]),
            tier=tier,
            drill=bool(incident["drill"]),
            by=by,
            cause=(incident["cause"] or next((a["cause"] for a in reversed(real) if a["cause"]), None))
            if status == "resolved"
            else None,
            link=link,
        )
        body = update.to_json()
        dedup = f"robot:{incident_id}:{name}"
        # A step (raised, escalated, acknowledged ...) or a worse severity goes at once; an incident that merely
        # grows is told at most once per update_interval_s, so one smoky stairwell cannot use up the robot's rate
        # while another building's fire waits (``pages`` keeps when this robot last heard of the incident).
        seen = cur.execute(
            "SELECT severity, last_ms FROM pages WHERE incident_id = ? AND phone = ?", (incident_id, robot.target)
        ).fetchone()
        send_at = now_ms
        if event == "incident.updated" and seen is not None and int(severity) <= int(seen["severity"]):
            send_at = max(now_ms, int(seen["last_ms"]) + robot.update_interval_s * 1000)
        cur.execute(
            f"UPDATE outbox SET body = ?, {_RAISE_PRIORITY}, event = ?,"
            " next_ms = CASE WHEN next_ms > ? THEN ? ELSE next_ms END WHERE dedup = ? AND state = 'pending'",
            (body, prio, prio, f"robot.{status}", send_at, send_at, dedup),
        )
        if not cur.rowcount:
            insert_outbox(
                cur,
                msg_id=f"robot_{uuid.uuid4().hex}",
                channel="robot",
                target=robot.target,
                event=f"robot.{status}",
                priority=prio,
                alert_id=None,
                incident_id=incident_id,
                recipient=name,
                phone=None,
                body=body,
                next_ms=send_at,
                created_ms=now_ms,
                dedup=dedup,
                building=str(incident["building"]),
            )
        due = cur.execute("SELECT next_ms FROM outbox WHERE dedup = ? AND state = 'pending'", (dedup,)).fetchone()
        cur.execute(
            "INSERT INTO pages (incident_id, phone, severity, last_ms) VALUES (?,?,?,?)"
            f" ON CONFLICT(incident_id, phone) DO UPDATE SET {_KEEP_WORST_PAGE},"
            " last_ms = excluded.last_ms",
            (incident_id, robot.target, int(severity), int(due[0]) if due is not None else send_at),
        )
    return names
