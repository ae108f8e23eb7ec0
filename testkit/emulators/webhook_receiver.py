"""A Standard Webhooks receiver that verifies every request with the ``standardwebhooks`` reference library."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from testkit.emulators.base import Emulator


@dataclass
class Delivery:
    msg_id: str
    timestamp: str
    body: dict[str, Any]
    status: int  # what we answered


class WebhookReceiver(Emulator):
    def __init__(self, secret: str, path: str = "/hook") -> None:
        super().__init__()
        self.secret = secret
        self.path = path
        self.verifier = Webhook(secret)
        self.attempts: list[Delivery] = []  # every request, including failed ones
        self.app.router.add_post(path, self._handle)

    @property
    def endpoint(self) -> str:
        return self.url + self.path

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.attempts if 200 <= d.status < 300]

    def accepted_ids(self) -> list[str]:
        return [d.msg_id for d in self.accepted]

    def of_type(self, event: str) -> list[Delivery]:
        return [d for d in self.accepted if d.body["type"] == event]

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            self.verifier.verify(body, headers)
        except WebhookVerificationError as exc:
            self.errors.append(f"signature: {exc}")
            self.changed()
            return web.json_response({"error": "bad signature"}, status=400)
        data = json.loads(body)
        for key in ("type", "timestamp", "data"):
            if key not in data:
                self.errors.append(f"body lacks {key!r}")
        response = await self.scripted()
        status = 200 if response is None else response.status
        self.attempts.append(Delivery(headers["webhook-id"], headers["webhook-timestamp"], data, status))
        self.changed()
        return response or web.json_response({"ok": True})
