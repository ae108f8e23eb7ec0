"""Shared plumbing: an aiohttp server on a free loopback port, a scripted list of failures, and awaitable state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from simulators.receiver import serve


class Emulator:
    def __init__(self) -> None:
        self.app = web.Application()
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.errors: list[str] = []  # verification failures: a test asserts this stays empty
        self.requests = 0
        # Scripted behaviour for the next requests: an int status to answer with, ("hang", seconds),
        # ("hold", asyncio.Event) or ("retry-after", status, value).  Consumed one per request; afterwards requests
        # succeed.
        self.script: list[Any] = []
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Emulator:
        self.runner, self.port = await serve(self.app, host="127.0.0.1", port=0)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Await until ``predicate()`` holds (re-checked on every request), or fail after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("condition not reached before the deadline")
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    async def scripted(self) -> web.Response | None:
        """Apply the next scripted behaviour; None means 'handle normally'."""
        if not self.script:
            return None
        step = self.script.pop(0)
        if step is None:
            return None
        if isinstance(step, int):
            return web.json_response({"error": f"scripted {step}"}, status=step)
        if step[0] == "hang":
            # Hold the request past the client's timeout.  ``("hang", s)`` then answers 599 (recorded as not
            # acknowledged); ``("hang", s, "process")`` then processes it anyway, like a provider that sent the
            # SMS but whose answer never reached the client.
            await asyncio.sleep(step[1])
            if len(step) > 2 and step[2] == "process":
                return None
            return web.json_response({"error": "too late"}, status=599)
        if step[0] == "hold":
            # Hold the request until the test sets the event (``("hold", asyncio.Event())``), then answer 599: a
            # request in flight for exactly as long as the test needs, with no clock involved.
            await step[1].wait()
            return web.json_response({"error": "held, then refused"}, status=599)
        if step[0] == "retry-after":
            return web.json_response({"error": "slow down"}, status=step[1], headers={"Retry-After": str(step[2])})
        if step[0] == "redirect":
            raise web.HTTPFound(step[1])
        raise AssertionError(f"bad script step {step!r}")
