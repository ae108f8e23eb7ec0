"""``POST /api/v1/voice/receipts``: the voice providers' result receipts (answered, keys pressed)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from alerts.voice.receipts import handle_voice_receipt
from gateway.api.framework import API_PREFIX, BODY_LIMIT_KEY, problem_response
from gateway.api.routes.state import STATE_KEY
from gateway.api.runtime import Runtime


def add_voice_receipts(app: web.Application, runtime: Runtime) -> None:
    """Authenticated by the relay's Standard Webhooks signature (``notify.voice.receipt_secret``), not by bearer
    token, so it is not part of the bearer-token OpenAPI surface (see ``alerts/voice/receipts.py``)."""

    async def voice_receipts(request: web.Request) -> web.StreamResponse:
        store = runtime.store
        if store is None:
            return problem_response(503, detail="voice receipts are not available", instance=request.path)
        limit = request.app[BODY_LIMIT_KEY]
        if request.content_length is not None and request.content_length > limit:
            return problem_response(413, detail=f"the limit is {limit} bytes", instance=request.path)
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            return problem_response(413, detail=f"the limit is {limit} bytes", instance=request.path)
        state = request.app[STATE_KEY]
        result = await asyncio.to_thread(
            handle_voice_receipt, store, headers=dict(request.headers), body=body, now_ms=state.clock_ms()
        )
        if result.status >= 400:
            return problem_response(result.status, detail=result.message, instance=request.path)
        payload = {"message": result.message, "recorded": result.recorded, "acknowledged": list(result.acknowledged)}
        return web.json_response(payload, status=result.status)

    app.router.add_post(API_PREFIX + "/voice/receipts", voice_receipts)
