"""What ``firegrid run`` and ``firegrid console`` do while they run: wait for a stop request, or for one of their
tasks to end by itself (never meant to happen: it is logged, and the process exits 1 after its orderly shutdown)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping


async def until_stop_or_failure(
    tasks: Mapping[str, asyncio.Task[None]], stop: asyncio.Event, *, log: logging.Logger
) -> int:
    """0 once ``stop`` is set; 1 when a task ended first (each one that did is logged with what it raised).  The
    caller shuts down in either case."""
    waiter = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait({waiter, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    exit_code = 0
    for task in done:
        if task is waiter:
            continue
        exc = task.exception() if not task.cancelled() else None
        log.critical("%s stopped unexpectedly: %r; shutting down", task.get_name(), exc)
        exit_code = 1
    return exit_code
