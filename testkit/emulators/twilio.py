"""Twilio Messages API emulator: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``, HTTP Basic auth with
AccountSid:AuthToken, form-encoded ``To``, ``From`` or ``MessagingServiceSid``, ``Body``; 201 + message resource."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from aiohttp import web

from testkit.emulators.base import Emulator


class TwilioSms(Emulator):
    def __init__(self, *, account_sid: str, auth_token: str, from_number: str) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.from_number = from_number
        self.messages: list[dict[str, Any]] = []
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def _fail(self, status: int, code: int, message: str) -> web.Response:
        self.errors.append(f"{code}: {message}")
        self.changed()
        return web.json_response({"code": code, "message": message, "status": status}, status=status)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.method != "POST" or request.path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return self._fail(404, 20404, f"{request.method} {request.path}")
        auth = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if auth != expected:
            return self._fail(401, 20003, "Authenticate")
        if not request.content_type == "application/x-www-form-urlencoded":
            return self._fail(400, 21000, f"content type {request.content_type}")
        form = await request.post()
        to, sender, body = form.get("To"), form.get("From"), form.get("Body")
        if not isinstance(to, str) or not to.startswith("+"):
            return self._fail(400, 21211, f"Invalid 'To' Phone Number: {to!r}")
        if sender != self.from_number and not form.get("MessagingServiceSid"):
            return self._fail(400, 21606, f"The 'From' phone number provided is not valid: {sender!r}")
        if not isinstance(body, str) or not body or len(body) > 1600:
            return self._fail(400, 21602, "Message body is required (at most 1600 characters)")
        response = await self.scripted()
        if response is not None:
            self.changed()
            return response
        sid = "SM" + uuid.uuid4().hex
        self.messages.append({"phone": to, "body": body, "sid": sid})
        self.changed()
        return web.json_response(
            {"sid": sid, "status": "queued", "to": to, "from": sender, "body": body, "account_sid": self.account_sid},
            status=201,
        )
