"""``POST /api/v1/voice/receipts``: the voice providers' result receipts (answered, keys pressed)."""

from __future__ import annotations

from aiohttp import web

from alerts.voice.receipts import handle_voice_receipt
from gateway.api.framework import API_PREFIX
from gateway.api.routes.provider_post import provider_post
from gateway.api.runtime import Runtime


def add_voice_receipts(app: web.Application, runtime: Runtime) -> None:
    """Authenticated by the relay's Standard Webhooks signature (``notify.voice.receipt_secret``), not by bearer
    token, so it is not part of the bearer-token OpenAPI surface (see ``alerts/voice/receipts.py``)."""
    voice_receipts = provider_post(
        runtime,
        unavailable="voice receipts are not available",
        handle=lambda store, posted: handle_voice_receipt(
            store, headers=posted.headers, body=posted.body, now_ms=posted.now_ms
        ),
        answer=lambda result: {
            "message": result.message,
            "recorded": result.recorded,
            "acknowledged": list(result.acknowledged),
        },
    )
    app.router.add_post(API_PREFIX + "/voice/receipts", voice_receipts)
