"""``/alerts``: list, read, and the operator's lifecycle steps (acknowledge, dispatch, resolve)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from alerts.records import OPEN_STATES
from alerts.store import AlertChange, AlertNotFound, InvalidTransition
from gateway.api import models as m
from gateway.api import views as v
from gateway.api.framework import ApiError, Call, id_param, operation
from gateway.api.routes.listing import page, scope
from gateway.api.routes.state import alert_store, check_scope, state_of

_ALL_STATES = frozenset(s.value for s in m.AlertState)


@operation(
    "GET",
    "/alerts",
    summary="List alerts, newest first",
    tag="alerts",
    query=m.AlertQuery,
    response=m.AlertPage,
    errors=(403,),
)
async def list_alerts(call: Call) -> m.AlertPage:
    """Filters combine with AND.  `active=true` lists alerts not yet resolved; `since` is epoch ms or RFC 3339."""
    q: m.AlertQuery = call.query
    where = scope(call, building=q.building, grid=q.grid)
    states = set(_ALL_STATES)
    if q.active is True:
        states &= set(OPEN_STATES)
    elif q.active is False:
        states -= set(OPEN_STATES)
    if q.state is not None:
        states &= {q.state.value}
    store = alert_store(call)
    rules = state_of(call).rules
    listed = await page(
        call,
        limit=q.limit,
        offset=q.offset,
        fetch=lambda limit, offset: store.list_alerts(
            building=where.building,
            grid=where.grid,
            state=sorted(states) if len(states) < len(_ALL_STATES) else None,
            severity=None if q.severity is None else q.severity.value,
            since_ms=q.since,
            limit=limit,
            offset=offset,
        ),
        convert=lambda record: v.alert(
            record, building_grids=where.building_grids, rules=rules, locations=state_of(call).device_locations
        ),
    )
    return m.AlertPage(items=listed.items, limit=q.limit, offset=q.offset, next_offset=listed.next_offset)


async def active_alerts(call: Call) -> list[m.Alert]:
    """The open alerts the token may see, fire first (none when the gateway has no store)."""
    store = state_of(call).runtime.store
    if store is None:
        return []
    grids = state_of(call).building_grids
    records = await asyncio.to_thread(store.active_alerts)
    who = call.who
    rules, locations = state_of(call).rules, state_of(call).device_locations
    return [
        v.alert(r, building_grids=grids, rules=rules, locations=locations)
        for r in records
        if who.sees_building(r.building)
    ]


async def _get_alert(call: Call, raw_id: str) -> m.AlertDetail:
    if not raw_id.isdigit() or len(raw_id) > 18:
        raise ApiError(404, f"no alert {raw_id!r}")
    record = await asyncio.to_thread(alert_store(call).get_alert, int(raw_id))
    if record is None:
        raise ApiError(404, f"no alert {raw_id!r}")
    check_scope(call.who, building=record.building)
    state = state_of(call)
    return v.alert_detail(
        record, building_grids=state.building_grids, rules=state.rules, locations=state.device_locations
    )


@operation(
    "GET",
    "/alerts/{id}",
    summary="One alert with its audit trail and the readings that raised it",
    tag="alerts",
    response=m.AlertDetail,
    path_params=(id_param("id", "alert id"),),
)
async def get_alert(call: Call) -> m.AlertDetail:
    return await _get_alert(call, call.params["id"])


async def _lifecycle(call: Call, step: Callable[[int, int], AlertChange]) -> m.AlertDetail:
    """``step(alert_id, now_ms)``: one of the store's lifecycle methods, run off the event loop."""
    raw_id = call.params["id"]
    await _get_alert(call, raw_id)  # 404 / 403 before anything changes
    now_ms = state_of(call).clock_ms()
    try:
        await asyncio.to_thread(step, int(raw_id), now_ms)
    except AlertNotFound:
        raise ApiError(404, f"no alert {raw_id!r}") from None
    except InvalidTransition as exc:  # e.g. acknowledging an alert someone already resolved
        raise ApiError(409, str(exc)[:300] or type(exc).__name__, type="urn:firegrid:problem:lifecycle") from None
    return await _get_alert(call, raw_id)


def _by(call: Call, given: str | None) -> str:
    return given or call.who.name


@operation(
    "POST",
    "/alerts/{id}/ack",
    summary="Acknowledge an alert (stops escalation)",
    tag="alerts",
    role="operator",
    body=m.AckRequest,
    response=m.AlertDetail,
    path_params=(id_param("id", "alert id"),),
    errors=(409,),
)
async def ack_alert(call: Call) -> m.AlertDetail:
    body: m.AckRequest = call.body
    store, by = alert_store(call), _by(call, body.by)
    return await _lifecycle(call, lambda alert_id, now: store.acknowledge(alert_id, by=by, note=body.note, now_ms=now))


@operation(
    "POST",
    "/alerts/{id}/dispatch",
    summary="Dispatch a task-force member or team to an alert",
    tag="alerts",
    role="operator",
    body=m.DispatchRequest,
    response=m.AlertDetail,
    path_params=(id_param("id", "alert id"),),
    errors=(409,),
)
async def dispatch_alert(call: Call) -> m.AlertDetail:
    body: m.DispatchRequest = call.body
    store, by = alert_store(call), _by(call, body.by)
    return await _lifecycle(
        call, lambda alert_id, now: store.dispatch(alert_id, by=by, to=body.to, note=body.note, now_ms=now)
    )


@operation(
    "POST",
    "/alerts/{id}/resolve",
    summary="Resolve an alert with its cause",
    tag="alerts",
    role="operator",
    body=m.ResolveRequest,
    response=m.AlertDetail,
    path_params=(id_param("id", "alert id"),),
    errors=(409,),
)
async def resolve_alert(call: Call) -> m.AlertDetail:
    body: m.ResolveRequest = call.body
    store, by, cause = alert_store(call), _by(call, body.by), body.cause.value
    return await _lifecycle(
        call, lambda alert_id, now: store.resolve(alert_id, by=by, cause=cause, note=body.note, now_ms=now)
    )
