"""Twilio Programmable Messaging: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP Basic auth
(AccountSid:AuthToken) and a form body (``To``, ``From`` or ``MessagingServiceSid``, ``Body``); 201 with the
message resource on success, a JSON error (``code``, ``message``) otherwise."""

from __future__ import annotations

import base64

import aiohttp
import orjson

from alerts.config import SmsConfig
from alerts.sms import SmsMessage, request
from alerts.webhook import SendResult

ENDPOINT = "https://api.twilio.com"


def _parse(status: int, body: bytes) -> SendResult:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = {}
    if status in (200, 201):
        return SendResult(ok=True, status=status, provider_id=data.get("sid"))
    return SendResult(ok=False, status=status, error=f"twilio {data.get('code')}: {data.get('message')}")


async def send(session: aiohttp.ClientSession, config: SmsConfig, message: SmsMessage) -> SendResult:
    base = (config.endpoint or ENDPOINT).rstrip("/")
    sid = config.account_sid or ""
    form = {"To": message.phone, "Body": message.text}
    if config.messaging_service_sid:
        form["MessagingServiceSid"] = config.messaging_service_sid
    else:
        form["From"] = config.from_number or ""
    token = config.auth_token.get_secret_value() if config.auth_token else ""
    auth = "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()
    return await request(
        session,
        config,
        "POST",
        f"{base}/2010-04-01/Accounts/{sid}/Messages.json",
        parse=_parse,
        data=form,
        headers={"Authorization": auth},
    )
