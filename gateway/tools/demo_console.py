"""The city-wide console beside the demo's gateway: ``firegrid console`` in-process, over the same store, on its own
port.  What a command centre runs over many gateways (docs/deploy.md, "City-wide console"), shown on one: the same
dashboard, its live updates read from the store's change log, its actions written to the store."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.config import FiregridConfig
from gateway.tools.console import Console, district


class DemoConsole:
    def __init__(self, config: FiregridConfig) -> None:
        self.console = Console(district(config, listen="127.0.0.1:0"))
        self._task: asyncio.Task[int] | None = None

    async def start(self, *, timeout_s: float = 15.0) -> str:
        """Start it; its dashboard's URL once it answers."""
        self._task = asyncio.create_task(self.console.run(), name="console")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.console.http_port in (None, 0):
            if self._task.done():
                raise RuntimeError(f"the console stopped while starting: {self._task.exception()!r}")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the console did not start within {timeout_s:g} s")
            await asyncio.sleep(0.05)
        return f"http://127.0.0.1:{self.console.http_port}/"

    async def stop(self) -> None:
        if self._task is None:
            return
        self.console.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 10)
