"""A generic HTTP SMS gateway: JSON ``{"to", "text"}``, ``Authorization: Bearer <token>`` and
``X-Signature: hex(HMAC-SHA256(secret, "<X-Timestamp>.<body>"))``."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from testkit.emulators.base import Emulator


class HttpSms(Emulator):
    def __init__(self, *, token: str, hmac_secret: str) -> None:
        super().__init__()
        self.token = token
        self.hmac_secret = hmac_secret
        self.messages: list[dict[str, Any]] = []
        self.app.router.add_post("/send", self._handle)

    def _fail(self, status: int, message: str) -> web.Response:
        self.errors.append(message)
        self.changed()
        return web.json_response({"error": message}, status=status)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._fail(401, "bad token")
        stamp = request.headers.get("X-Timestamp", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            return self._fail(401, "bad timestamp")
        mac = hmac.new(self.hmac_secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, request.headers.get("X-Signature", "")):
            return self._fail(401, "bad signature")
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            return self._fail(400, "body is not JSON")
        if not str(data.get("to", "")).startswith("+") or not data.get("text"):
            return self._fail(400, f"bad message {data}")
        response = await self.scripted()
        if response is not None:
            self.changed()
            return response
        self.messages.append({"phone": data["to"], "text": data["text"], "key": request.headers.get("Idempotency-Key")})
        self.changed()
        return web.json_response({"id": len(self.messages)})
