"""The grid-governance platform: every lifecycle step of every alert, as the same signed Standard Webhooks that
ordinary endpoints receive, so that the platform's work order mirrors firegrid's.  The platform may call back the
HTTP API (acknowledge / dispatch / resolve) with an operator token; those calls produce the next events here."""

from __future__ import annotations

import aiohttp

from alerts import webhook
from alerts.config import GovernanceConfig
from alerts.webhook import SendResult


async def send(
    session: aiohttp.ClientSession, config: GovernanceConfig, *, msg_id: str, body: bytes, now_s: float | None = None
) -> SendResult:
    return await webhook.send(
        session,
        url=config.url,
        secret=config.secret.get_secret_value(),
        msg_id=msg_id,
        body=body,
        timeout_s=config.timeout_s,
        allow_private=config.allow_private,
        now_s=now_s,
    )
