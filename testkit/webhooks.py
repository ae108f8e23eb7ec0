"""Receiving firegrid's signed webhooks in tests and benchmarks.

One receiver (:class:`simulators.receiver.WebhookReceiver`, the one ``firegrid verify`` uses) with every signature
checked by the ``standardwebhooks`` reference library: the check does not share code with firegrid's signer, so a
signing bug cannot be mirrored by the same bug here.  :class:`ThreadedReceiver` serves it from a thread of its own
(benches and tests that block while polling a subprocess); :class:`WebhookCounter` adds scripted answers and a
record of every attempt (reliability tests, the soak bench).  The in-loop variant with the emulators' scripts is
:class:`testkit.emulators.webhook_receiver.WebhookReceiver`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from simulators.receiver import Answer, Arrival, Check, WebhookReceiver
from testkit.faults import ThreadedApp

__all__ = [
    "Arrival",
    "Hit",
    "ThreadedReceiver",
    "WebhookCounter",
    "new_whsec",
    "standard_webhooks_check",
    "verify_signature",
]

# The reference library's messages, in the words the benches report refusals with.
_REASONS = {
    "Missing required headers": "missing webhook-id/-timestamp/-signature",
    "Invalid Signature Headers": "webhook-timestamp is not an integer",
    "Message timestamp too old": "webhook-timestamp outside tolerance",
    "Message timestamp too new": "webhook-timestamp outside tolerance",
    "No matching signature found": "no matching v1 signature",
}


def new_whsec(seed: str = "firegrid-bench") -> str:
    """A deterministic Standard Webhooks secret ``whsec_<base64 of 32 bytes>``."""
    return "whsec_" + base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def standard_webhooks_check(secret: str) -> Check:
    """A receiver check: None for a valid Standard Webhooks signature within five minutes, else why not."""
    verifier = Webhook(secret)

    def check(headers: Mapping[str, str], body: bytes) -> str | None:
        try:
            verifier.verify(body, dict(headers), json_parse=False)
        except WebhookVerificationError as exc:
            return _REASONS.get(str(exc), str(exc))
        return None

    return check


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes) -> str | None:
    """None when the request carries a valid Standard Webhooks signature, else the reason it does not."""
    return standard_webhooks_check(secret)(headers, body)


class ThreadedReceiver:
    """The receiver on a free loopback port, on its own event loop in its own thread; checks every signature.

    Valid requests are answered 204 (unless ``answer`` says otherwise) and kept in :attr:`arrivals`; invalid ones
    401, their reasons in :attr:`rejected`."""

    def __init__(
        self, secret: str | None = None, *, port: int | None = None, path: str = "/hook", answer: Answer | None = None
    ) -> None:
        self.secret = secret if secret is not None else new_whsec()
        self.path = path
        self.receiver = WebhookReceiver(
            path=path, check=standard_webhooks_check(self.secret), answer=answer, max_body=4 * 1024**2
        )
        self._server = ThreadedApp(self.receiver.app, port=port)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url + self.path

    @property
    def arrivals(self) -> list[Arrival]:
        return self.receiver.arrivals

    @property
    def rejected(self) -> list[str]:
        return self.receiver.rejected

    def on_arrival(self, callback: Callable[[Arrival], None]) -> None:
        """Called in the receiver's thread for each valid request (keep it cheap)."""
        self.receiver.on_arrival(callback)

    def start(self) -> ThreadedReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> ThreadedReceiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class Hit:
    msg_id: str
    at: float  # time.monotonic() when the answer was sent (or the hang began)
    wall_ms: int
    status: int  # what we answered; 0 = hung until the client gave up
    type: str
    data: dict[str, Any]
    signature_ok: bool


class WebhookCounter(ThreadedReceiver):
    """Counts webhook deliveries by ``webhook-id``, each attempt with its time and answer.

    ``script`` holds answers for the next requests: an int status, or ``("hang", seconds)``.  ``delay_s`` delays
    every 2xx answer (to widen the window in which a crash can land mid-delivery).  A request with a bad signature
    is answered 400 and recorded with ``signature_ok=False``."""

    def __init__(self, secret: str, *, path: str = "/hook", delay_s: float = 0.0) -> None:
        super().__init__(secret, path=path, answer=self._answer)
        self.delay_s = delay_s
        self.script: list[int | tuple[str, float]] = []
        self.hits: list[Hit] = []
        self._lock = threading.Lock()

    def snapshot(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)

    def accepted(self) -> list[Hit]:
        return [h for h in self.snapshot() if 200 <= h.status < 300]

    def accepted_ids(self) -> list[str]:
        return [h.msg_id for h in self.accepted()]

    def of_type(self, event: str) -> list[Hit]:
        return [h for h in self.accepted() if h.type == event]

    async def _answer(self, arrival: Arrival) -> web.StreamResponse:
        try:
            document = json.loads(arrival.body)
        except ValueError:
            document = {}
        with self._lock:
            answer = self.script.pop(0) if self.script else 200

        def record(status: int) -> None:
            with self._lock:
                self.hits.append(
                    Hit(
                        msg_id=arrival.msg_id,
                        at=time.monotonic(),
                        wall_ms=int(time.time() * 1000),
                        status=status,
                        type=str(document.get("type", "")),
                        data=document.get("data") or {},
                        signature_ok=arrival.problem is None,
                    )
                )

        if isinstance(answer, tuple):
            record(0)
            await asyncio.sleep(answer[1])
            return web.Response(status=200)  # too late: the client has given up
        if arrival.problem is not None:
            record(400)
            return web.json_response({"error": "bad signature"}, status=400)
        if 200 <= answer < 300 and self.delay_s:
            await asyncio.sleep(self.delay_s)
        record(answer)
        return web.json_response({"ok": answer < 300}, status=answer)
