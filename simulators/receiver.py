"""An HTTP endpoint that receives webhooks.

``firegrid verify --webhook-listen`` receives a deployment's drill webhooks with it; the tests and the benchmarks
receive firegrid's signed webhooks with the same class, plugging in a signature check (the ``standardwebhooks``
reference library, so a signing bug in firegrid is not mirrored by the same bug in the check) and scripted answers
(failures, slow answers) where they need them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

Check = Callable[[Mapping[str, str], bytes], str | None]
"""Judges one request (lower-cased headers, body): None accepts it, a string says why it is refused."""

Answer = Callable[["Arrival"], Awaitable[web.StreamResponse | None]]
"""Chooses the response to one request; None answers as usual (204, or 401 when the check refused it)."""


async def serve(app: web.Application, *, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (port 0: a free one): the runner to clean up, and the port it listens on."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request, as it arrived."""

    at_ns: int  # time.monotonic_ns() once the body had been read: latency measurements end here
    msg_id: str  # the webhook-id header, "" when absent
    body: bytes
    wall_ms: int = 0  # time.time() in ms at the same moment, to compare with timestamps inside the body
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased
    problem: str | None = None  # why the check refused it; None when accepted (or nothing checks)


class WebhookReceiver:
    """Receives POSTs on ``path`` (by default any path): accepted ones are kept in :attr:`arrivals` and handed to
    each :meth:`on_arrival` callback, refused ones counted in :attr:`rejected` by reason.

    Serve it with :meth:`start` on the running event loop, or serve :attr:`app` from elsewhere (a thread of its own).
    """

    def __init__(
        self,
        *,
        path: str = "/{tail:.*}",
        check: Check | None = None,
        answer: Answer | None = None,
        max_body: int = 1024**2,
    ) -> None:
        self.arrivals: list[Arrival] = []
        self.rejected: list[str] = []
        self.port = 0
        self._check = check
        self._answer = answer
        self._listeners: list[Callable[[Arrival], None]] = []
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=max_body)
        self.app.router.add_post(path, self._handle)

    def on_arrival(self, callback: Callable[[Arrival], None]) -> None:
        """Call ``callback`` with each accepted request, on the receiver's event loop (keep it cheap)."""
        self._listeners.append(callback)

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> WebhookReceiver:
        """Listen on ``host:port`` (port 0: a free one, then in :attr:`port`); OSError when it cannot."""
        self._runner, self.port = await serve(self.app, host=host, port=port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        at_ns = time.monotonic_ns()
        headers = {k.lower(): v for k, v in request.headers.items()}
        problem = self._check(headers, body) if self._check is not None else None
        arrival = Arrival(
            at_ns=at_ns,
            msg_id=headers.get("webhook-id", ""),
            body=body,
            wall_ms=int(time.time() * 1000),
            headers=headers,
            problem=problem,
        )
        if problem is None:
            self.arrivals.append(arrival)
            for callback in self._listeners:
                callback(arrival)
        else:
            self.rejected.append(problem)
        response = await self._answer(arrival) if self._answer is not None else None
        if response is not None:
            return response
        if problem is not None:
            return web.Response(status=401, text=problem)
        return web.Response(status=204)
