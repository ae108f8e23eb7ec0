"""The webhook receiver on the test's own event loop, with the emulators' scripted answers; every request's signature
is checked with the ``standardwebhooks`` reference library (see :mod:`testkit.webhooks`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulators.receiver import Arrival
from simulators.receiver import WebhookReceiver as Receiver
from testkit.emulators.base import Emulator
from testkit.webhooks import standard_webhooks_check


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
        self.attempts: list[Delivery] = []  # every request with a valid signature, including failed ones
        self.receiver = Receiver(path=path, check=standard_webhooks_check(secret), answer=self._answer)
        self.app = self.receiver.app

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

    async def _answer(self, arrival: Arrival) -> web.StreamResponse:
        self.requests += 1
        if arrival.problem is not None:
            self.errors.append(f"signature: {arrival.problem}")
            self.changed()
            return web.json_response({"error": "bad signature"}, status=400)
        data = json.loads(arrival.body)
        for key in ("type", "timestamp", "data"):
            if key not in data:
                self.errors.append(f"body lacks {key!r}")
        response = await self.scripted()
        status = 200 if response is None else response.status
        self.attempts.append(Delivery(arrival.msg_id, arrival.headers["webhook-timestamp"], data, status))
        self.changed()
        return response or web.json_response({"ok": True})
