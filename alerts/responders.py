"""What an action link does when its page is POSTed: acknowledge, "on my way", on scene -- each a step on the
incident's timeline under the recipient's name (``actor`` ``link:<recipient>``, ``by_name`` the name given on the
page, else the recipient).  Opening the link (GET) never comes here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from alerts.links import LinkClaims
from alerts.store import AlertStore
from alerts.store.errors import IncidentNotFound, InvalidIncidentTransition

ACTIONS: Final[tuple[str, ...]] = ("ack", "en_route", "arrive")


@dataclass(frozen=True, slots=True)
class ActionResult:
    status: int  # the HTTP status to answer with
    message: str


def perform(store: AlertStore, claims: LinkClaims, *, action: str, by_name: str | None, now_ms: int) -> ActionResult:
    if action not in ACTIONS:
        return ActionResult(400, f"unknown action {action!r}")
    actor = f"link:{claims.recipient}"
    name = (by_name or "").strip()[:64] or (None if claims.recipient.startswith("robot:") else claims.recipient)
    incident = store.get_incident(claims.incident_id)
    if incident is None:
        return ActionResult(404, "no such incident")
    if incident.incident.state == "resolved":
        return ActionResult(409, "the incident is already resolved")
    try:
        if action == "ack":
            store.acknowledge_incident(
                claims.incident_id,
                by=actor,
                note="acknowledged by action link",
                now_ms=now_ms,
                actor=actor,
                by_name=name,
            )
        elif action == "en_route":
            if incident.incident.state == "open":
                store.acknowledge_incident(
                    claims.incident_id, by=actor, note="on the way", now_ms=now_ms, actor=actor, by_name=name
                )
            store.en_route(claims.incident_id, actor=actor, by_name=name, via="link", now_ms=now_ms)
        else:
            store.arrive_incident(claims.incident_id, actor=actor, by_name=name, via="link", now_ms=now_ms)
    except IncidentNotFound:
        return ActionResult(404, "no such incident")
    except InvalidIncidentTransition as exc:
        return ActionResult(409, str(exc))
    return ActionResult(200, action)
