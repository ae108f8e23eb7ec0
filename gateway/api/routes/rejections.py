"""``/rejections``: recent payloads the gateway refused, with the reason."""

from __future__ import annotations

from gateway.api import models as m
from gateway.api import views as v
from gateway.api.framework import Call, operation
from gateway.api.routes.state import check_scope, required, state_of


@operation(
    "GET",
    "/rejections",
    summary="Recent payloads the gateway rejected, with the reason",
    tag="devices",
    query=m.RejectionQuery,
    response=m.RejectionList,
    errors=(403,),
)
async def list_rejections(call: Call) -> m.RejectionList:
    q: m.RejectionQuery = call.query
    check_scope(call.who, building=q.building)
    rejections = required(state_of(call).runtime.rejections, "rejections")
    items: list[m.Rejection] = []
    for row in rejections.recent(1000):
        rejection = v.rejection_from(row)
        if not call.who.sees_building(rejection.building):
            continue
        if (q.reason is not None and rejection.reason != q.reason) or (
            q.building is not None and rejection.building != q.building
        ):
            continue
        items.append(rejection)
    items.sort(key=lambda r: r.ts_ms or 0, reverse=True)
    return m.RejectionList(items=items[: q.limit])
