"""``/whoami`` and ``/stream``: the calling token, and the live Server-Sent Events of alert and device changes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from alerts.inspections.records import InspectionChange
from alerts.records import AlertRecord, IncidentRecord
from alerts.store import AlertChange
from gateway.api import inspection_models as im
from gateway.api import models as m
from gateway.api import views
from gateway.api.auth import Principal
from gateway.api.framework import Call, operation
from gateway.api.hub import Event, ResumeGap, SubscriberLagged
from gateway.api.routes.state import ApiState, state_of

log = logging.getLogger("firegrid.api")


@operation("GET", "/whoami", summary="The calling token's name, role and scope", tag="meta", response=m.WhoAmI)
async def whoami(call: Call) -> m.WhoAmI:
    who = call.who
    return m.WhoAmI(
        name=who.name,
        role=who.role,
        grids=sorted(who.grids) if who.grids is not None else None,
        buildings=sorted(who.buildings) if who.buildings is not None else None,
    )


def _event_filter(who: Principal) -> Callable[[Event], bool] | None:
    if not who.scoped:
        return None

    def accept(event: Event) -> bool:
        building = event.data.get("building") if isinstance(event.data, Mapping) else None
        return isinstance(building, str) and who.sees_building(building)

    return accept


@operation(
    "GET",
    "/stream",
    summary="Live Server-Sent Events: every alert transition and device status change",
    tag="meta",
    query=m.StreamQuery,
    stream=True,
)
async def stream(call: Call) -> web.StreamResponse:
    """`text/event-stream`.  Events: `hello` (on connect), `alert` (any alert transition or lifecycle step), `incident`
    (an incident opened, grown or stepped), `hazard` (a hazard reported or stepped), `inspection` (an inspection
    recorded), `device` (status change), `reset` (events were missed: reload), `lagged` (the client was too slow;
    reconnect).  Comment lines are heartbeats.  Send `Last-Event-ID` to resume.  Tokens go in the Authorization
    header, never the URL."""
    request = call.request
    hub = state_of(call).hub
    accept = _event_filter(call.who)
    raw_last = request.headers.get("Last-Event-ID", "").strip()
    last_id = int(raw_last) if raw_last.isdigit() and len(raw_last) < 18 else None
    reset = False
    try:
        sub = hub.subscribe(last_event_id=last_id, accept=accept)
    except ResumeGap:
        sub = hub.subscribe(accept=accept)
        reset = True
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        },
    )
    try:
        await response.prepare(request)
        hello = b'retry: 1000\nevent: hello\ndata: {"last_id": %d}\n\n' % hub.last_id
        await response.write(hello)
        if reset:
            await response.write(b'event: reset\ndata: {"reason": "events were missed; reload"}\n\n')
        while True:
            try:
                event = await sub.get(within=hub.heartbeat_s)
            except SubscriberLagged:
                await response.write(b'event: lagged\ndata: {"reason": "too slow; reconnect with Last-Event-ID"}\n\n')
                break
            except StopAsyncIteration:
                break
            if event is None:
                await response.write(b": heartbeat %d\n\n" % int(time.time()))
            else:
                await response.write(event.encode_sse())
    except ConnectionResetError:  # the client went away
        pass
    finally:
        sub.close()
    return response


def render_change(state: ApiState, change: AlertChange) -> tuple[str, dict[str, Any]]:
    """An alert-store change as the live stream sends it: (``alert`` or ``incident``, the event's JSON object).
    The hub's events and the store's change log (what ``firegrid console`` follows) are both made here."""
    grids = state.building_grids
    kind = views.as_str(change.type, 64) or "alert.changed"
    record = change.record
    event: dict[str, Any] = {"change": kind, "ts_ms": change.ts_ms}
    if kind.startswith("incident."):
        incident = views.incident(record, building_grids=grids) if isinstance(record, IncidentRecord) else None
        event["building"] = incident.building if incident else None
        event["incident"] = incident.model_dump(mode="json") if incident else None
        return "incident", event
    alert = (
        views.alert(record, building_grids=grids, rules=state.rules, locations=state.device_locations)
        if isinstance(record, AlertRecord)
        else None
    )
    event["building"] = alert.building if alert else views.as_str(change.data.get("building"))
    event["alert"] = alert.model_dump(mode="json") if alert else None
    return "alert", event


class Renderings:
    """Each change rendered once.  The store renders it for its change log inside the transaction
    (:meth:`for_log`, the store's ``change_renderer``), and the hub's listener, told right after the ``COMMIT`` in
    the same thread, takes that rendering (:meth:`take`) instead of making it again: about 45 us a change, which a
    storm's batch would otherwise pay twice, once inside the store's lock.  ``keep=False`` (a console, whose hub is
    fed from the change log) keeps nothing."""

    LIMIT = 4096  # a change rendered but never told (its COMMIT failed) must not be kept for ever

    def __init__(self, state: ApiState, *, keep: bool) -> None:
        self.state = state
        self.keep = keep
        self._kept: dict[int, tuple[AlertChange, tuple[str, dict[str, Any]]]] = {}

    def for_log(self, change: AlertChange) -> tuple[str, dict[str, Any]]:
        rendered = render_change(self.state, change)
        if self.keep:
            if len(self._kept) >= self.LIMIT:
                self._kept.clear()
            self._kept[id(change)] = (change, rendered)  # the change itself is held, so its id is not reused
        return rendered

    def take(self, change: AlertChange) -> tuple[str, dict[str, Any]]:
        kept = self._kept.pop(id(change), None)
        if kept is not None and kept[0] is change:
            return kept[1]
        return render_change(self.state, change)


def store_listener(state: ApiState, renderings: Renderings | None = None) -> Callable[[AlertChange], None]:
    """Publish each alert-store change to the hub as an ``alert`` or ``incident`` event (rendered once: see
    :class:`Renderings`).

    Called by the store, possibly inside its transaction or from a worker thread: it must never raise (that could
    abort the store's write) and never block.
    """

    def on_change(change: AlertChange) -> None:
        try:
            state.hub.publish(*(renderings.take(change) if renderings is not None else render_change(state, change)))
        except Exception:  # never let the dashboard break an alert write
            log.exception("could not publish an alert change to the live stream")

    return on_change


def inspection_listener(state: ApiState) -> Callable[[InspectionChange], None]:
    """Publish each committed inspection and hazard step to the hub, as incident changes are: a ``hazard`` event
    (``{"change": "hazard.assigned", "building", "ts_ms", "hazard": {...}}``, the hazard as ``GET /hazards/{id}``
    lists it) or an ``inspection`` event (``{"change": "inspection.recorded", ..., "inspection": {...}}``).  Never
    raises, never blocks (the same rules as :func:`store_listener`)."""

    def on_change(change: InspectionChange) -> None:
        try:
            event: dict[str, Any] = {"change": change.type, "building": change.building, "ts_ms": change.ts_ms}
            if change.hazard is not None:
                event["hazard"] = im.HazardOut.of(change.hazard, now_ms=state.clock_ms()).model_dump(mode="json")
                state.hub.publish("hazard", event)
            elif change.inspection is not None:
                event["inspection"] = im.InspectionOut.of(change.inspection).model_dump(mode="json")
                state.hub.publish("inspection", event)
        except Exception:  # never let the dashboard break an inspection's write
            log.exception("could not publish an inspection change to the live stream")

    return on_change
