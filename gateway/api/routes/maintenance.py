"""``/maintenance``: windows in which alerts are recorded as tests and never paged.  The engine is the authority
(windows from the config and restored snapshots count too); the API remembers who opened the ones it opened."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from gateway.api import models as m
from gateway.api.framework import ApiError, Call, id_param, operation
from gateway.api.routes.state import ApiState, check_scope, required, state_of
from rules.engine import Engine
from rules.types import AlertTransition, MaintenanceWindow

log = logging.getLogger("firegrid.api")


def _window_out(window: MaintenanceWindow, created_by: str | None) -> m.MaintenanceWindowOut:
    return m.MaintenanceWindowOut(
        id=window.id,
        building=window.building,
        floor=window.floor,
        device=window.device,
        start_ms=window.start_ms,
        end_ms=window.end_ms,
        reason=window.reason,
        created_by=created_by,
    )


def _live_windows(state: ApiState) -> list[m.MaintenanceWindowOut]:
    """The engine's windows (it is the authority: windows from the config and restored snapshots count too)."""
    now = state.clock_ms()
    engine = state.runtime.engine
    listed = engine.maintenance() if engine is not None else []
    created = {w.id: w.created_by for w in state.maintenance.values()}
    out = [_window_out(w, created.get(w.id)) for w in listed if w.end_ms > now]
    return sorted(out, key=lambda w: (w.start_ms, w.id))


async def _engine_change(call: Call, change: Callable[[Engine], list[AlertTransition]]) -> None:
    """Change the engine under its lock, then commit what the change caused (test alerts cleared when a window
    closes) through the gateway's own commit path, so the store, outbox and engine snapshot stay consistent."""
    state = state_of(call)
    engine = required(state.runtime.engine, "engine")
    lock = state.runtime.engine_lock
    if lock is not None:
        async with lock:
            transitions = list(change(engine) or [])
    else:
        transitions = list(change(engine) or [])
    if not transitions:
        return
    apply = state.runtime.apply_transitions
    store = state.runtime.store
    if apply is not None:
        await apply(transitions)
    elif store is not None:
        await asyncio.to_thread(store.apply, transitions, now_ms=state.clock_ms())


@operation(
    "POST",
    "/maintenance",
    summary="Open a maintenance window: alerts in its scope are recorded as tests and never paged",
    tag="maintenance",
    role="operator",
    body=m.MaintenanceRequest,
    response=m.MaintenanceWindowOut,
    status=201,
    errors=(403,),
)
async def create_maintenance(call: Call) -> m.MaintenanceWindowOut:
    """Give `end_ms` or `duration_s`; `start_ms` defaults to now.  Scope: a whole building, a floor or one device."""
    body: m.MaintenanceRequest = call.body
    check_scope(call.who, building=body.building)
    state = state_of(call)
    now = state.clock_ms()
    start = body.start_ms if body.start_ms is not None else now
    if body.end_ms is not None and body.duration_s is not None:
        raise ApiError(422, "give end_ms or duration_s, not both", type="urn:firegrid:problem:invalid-body")
    end = body.end_ms if body.end_ms is not None else start + (body.duration_s or 0) * 1000
    if body.end_ms is None and body.duration_s is None:
        raise ApiError(422, "give end_ms or duration_s", type="urn:firegrid:problem:invalid-body")
    if end <= start or end <= now:
        raise ApiError(
            422, "the window must end after it starts and in the future", type="urn:firegrid:problem:invalid-body"
        )
    engine = state.runtime.engine
    if engine is not None and not engine.owns(body.building):
        # cluster mode: the window lives in the owning member's engine (and its snapshot), not in this one's
        raise ApiError(
            409,
            f"building {body.building} is judged by another cluster member now: open the window on that gateway",
            type="urn:firegrid:problem:not-owned",
        )
    window_id = "mw-" + uuid.uuid4().hex[:12]
    window = MaintenanceWindow(
        id=window_id,
        building=body.building,
        floor=body.floor,
        device=body.device,
        start_ms=start,
        end_ms=end,
        reason=body.reason,
    )
    await _engine_change(call, lambda engine: engine.set_maintenance(window))
    out = _window_out(window, call.who.name)
    state.maintenance[window_id] = out
    log.info("maintenance window %s opened on %s by %s", window_id, body.building, call.who.name)
    return out


@operation(
    "GET",
    "/maintenance",
    summary="Maintenance windows that have not ended",
    tag="maintenance",
    query=m.MaintenanceQuery,
    response=m.MaintenanceList,
    errors=(403,),
)
async def list_maintenance(call: Call) -> m.MaintenanceList:
    q: m.MaintenanceQuery = call.query
    check_scope(call.who, building=q.building)
    windows = [
        w
        for w in _live_windows(state_of(call))
        if call.who.sees_building(w.building) and (q.building is None or w.building == q.building)
    ]
    return m.MaintenanceList(items=windows)


@operation(
    "DELETE",
    "/maintenance/{id}",
    summary="Close a maintenance window early",
    tag="maintenance",
    role="operator",
    response=m.Deleted,
    path_params=(id_param("id", "maintenance window id"),),
)
async def delete_maintenance(call: Call) -> m.Deleted:
    window_id: str = call.params["id"]
    state = state_of(call)
    window = next((w for w in _live_windows(state) if w.id == window_id), None)
    if window is None or not call.who.sees_building(window.building):
        raise ApiError(404, f"no open maintenance window {window_id!r}")
    await _engine_change(call, lambda engine: engine.clear_maintenance(window_id))
    state.maintenance.pop(window_id, None)
    return m.Deleted(id=window_id, deleted=True)
