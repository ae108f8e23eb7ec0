"""``POST /api/v1/sms/inbound``: a paged person acknowledges by replying to the SMS."""

from __future__ import annotations

import asyncio

from aiohttp import web

from alerts.inbound import handle_inbound_sms
from gateway.api.framework import API_PREFIX, BODY_LIMIT_KEY, problem_response
from gateway.api.routes.state import STATE_KEY
from gateway.api.runtime import Runtime


def add_sms_inbound(app: web.Application, runtime: Runtime) -> None:
    """``POST /api/v1/sms/inbound``: acknowledge by SMS reply (``alerts.inbound.handle_inbound_sms``).

    It authenticates by the provider's signature, not by bearer token, so it is not part of the bearer-token
    OpenAPI surface (see ``alerts/inbound.py`` and ``docs/alerts.md``).
    """

    async def sms_inbound(request: web.Request) -> web.StreamResponse:
        store = runtime.store
        if store is None:
            return problem_response(503, detail="inbound SMS is not available", instance=request.path)
        limit = request.app[BODY_LIMIT_KEY]
        if request.content_length is not None and request.content_length > limit:
            return problem_response(413, detail=f"the limit is {limit} bytes", instance=request.path)
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            return problem_response(413, detail=f"the limit is {limit} bytes", instance=request.path)
        state = request.app[STATE_KEY]
        result = await asyncio.to_thread(
            handle_inbound_sms,
            store,
            headers=dict(request.headers),
            body=body,
            url=str(request.url),
            now_ms=state.clock_ms(),
        )
        if result.status >= 400:
            return problem_response(result.status, detail=result.message, instance=request.path)
        payload = {
            "message": result.message,
            "acknowledged": list(result.acknowledged),
            "incident_id": result.incident_id,
        }
        return web.json_response(payload, status=result.status)

    app.router.add_post(API_PREFIX + "/sms/inbound", sms_inbound)
