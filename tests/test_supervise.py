"""``until_stop_or_failure``: what ``firegrid run`` and ``firegrid console`` wait on while they run."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.service.supervise import until_stop_or_failure


async def _forever() -> None:
    await asyncio.Event().wait()


async def _fails(started: asyncio.Event) -> None:
    await started.wait()
    raise RuntimeError("disk gone")


async def test_a_requested_stop_is_exit_code_0_and_leaves_the_tasks_to_the_shutdown() -> None:
    stop = asyncio.Event()
    tasks = {"a": asyncio.create_task(_forever(), name="a")}
    asyncio.get_running_loop().call_soon(stop.set)
    assert await until_stop_or_failure(tasks, stop, log=logging.getLogger("test")) == 0
    assert not tasks["a"].done()  # the caller's shutdown stops them, in its own order
    tasks["a"].cancel()


async def test_a_task_that_ends_by_itself_is_logged_and_exit_code_1(caplog: pytest.LogCaptureFixture) -> None:
    go = asyncio.Event()
    tasks = {
        "pipeline": asyncio.create_task(_fails(go), name="pipeline"),
        "notifier": asyncio.create_task(_forever(), name="notifier"),
    }
    go.set()
    with caplog.at_level(logging.CRITICAL, logger="test"):
        assert await until_stop_or_failure(tasks, asyncio.Event(), log=logging.getLogger("test")) == 1
    assert "pipeline stopped unexpectedly: RuntimeError('disk gone'); shutting down" in caplog.text
    assert "notifier" not in caplog.text
    tasks["notifier"].cancel()
