"""A templated HTTP request for any other SMS gateway.

``notify.sms.http.body`` and header values may use ``{phone}``, ``{text}``, ``{msg_id}`` and every template
parameter (``{building}``, ``{location}``, ``{severity}``, ``{code}``, ``{count}``); values are JSON-escaped when the
content type is JSON.  ``token`` adds ``Authorization: Bearer``; ``hmac_secret`` adds ``X-Timestamp`` (Unix seconds)
and ``X-Signature: hex(HMAC-SHA256(secret, "<timestamp>.<body>"))``.  ``Idempotency-Key`` carries our message id.
Any 2xx is success.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import aiohttp
import orjson

from alerts.config import SmsConfig
from alerts.sms import SmsMessage, request
from alerts.webhook import SendResult


def _render(template: str, values: dict[str, str], *, json_escape: bool) -> str:
    out = template
    for key, value in values.items():
        rendered = orjson.dumps(value).decode()[1:-1] if json_escape else value
        out = out.replace("{" + key + "}", rendered)
    return out


def _parse(status: int, body: bytes) -> SendResult:
    if 200 <= status < 300:
        return SendResult(ok=True, status=status)
    return SendResult(ok=False, status=status, error=f"HTTP {status}: {body[:200]!r}")


async def send(session: aiohttp.ClientSession, config: SmsConfig, message: SmsMessage) -> SendResult:
    spec = config.http
    assert spec is not None and config.endpoint is not None  # guaranteed by SmsConfig validation
    values = {**message.params, "phone": message.phone, "text": message.text, "msg_id": message.msg_id}
    body = _render(spec.body, values, json_escape="json" in spec.content_type).encode()
    headers = {k: _render(v, values, json_escape=False) for k, v in spec.headers.items()}
    headers["Content-Type"] = spec.content_type
    headers["Idempotency-Key"] = message.msg_id
    if spec.token is not None:
        headers["Authorization"] = f"Bearer {spec.token.get_secret_value()}"
    if spec.hmac_secret is not None:
        stamp = str(int(time.time()))
        mac = hmac.new(spec.hmac_secret.get_secret_value().encode(), stamp.encode() + b"." + body, hashlib.sha256)
        headers["X-Timestamp"] = stamp
        headers["X-Signature"] = mac.hexdigest()
    return await request(session, config, spec.method, config.endpoint, parse=_parse, data=body, headers=headers)
