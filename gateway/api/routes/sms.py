"""``POST /api/v1/sms/inbound``: a paged person acknowledges by replying to the SMS."""

from __future__ import annotations

from aiohttp import web

from alerts.inbound import handle_inbound_sms
from gateway.api.framework import API_PREFIX
from gateway.api.routes.provider_post import provider_post
from gateway.api.runtime import Runtime


def add_sms_inbound(app: web.Application, runtime: Runtime) -> None:
    """``POST /api/v1/sms/inbound``: acknowledge by SMS reply (``alerts.inbound.handle_inbound_sms``).

    It authenticates by the provider's signature, not by bearer token, so it is not part of the bearer-token
    OpenAPI surface (see ``alerts/inbound.py`` and ``docs/alerts.md``).
    """
    sms_inbound = provider_post(
        runtime,
        unavailable="inbound SMS is not available",
        handle=lambda store, posted: handle_inbound_sms(
            store, headers=posted.headers, body=posted.body, url=posted.url, now_ms=posted.now_ms
        ),
        answer=lambda result: {
            "message": result.message,
            "acknowledged": list(result.acknowledged),
            "incident_id": result.incident_id,
        },
    )
    app.router.add_post(API_PREFIX + "/sms/inbound", sms_inbound)
