"""The fast lane's jobs overtake telemetry waiting for its group commit, and only when nothing is reordered by it.

The service's own pipeline (real decoder, engine, alert store and engine snapshots in SQLite) is fed messages
directly; the telemetry jobs' commit is held by a gate the test opens, so every assertion is about order, never
about time: what is in the store, which messages were acknowledged, which snapshot is saved, while the older
telemetry is still uncommitted.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import load_or_exit
from gateway.ingest.mqtt import EVENT_LANE, MAIN_LANE, Incoming
from gateway.ingest.pipeline import EngineState, Job
from gateway.service.service import Service
from testkit.gateway import store_rows, write_config

pytestmark = pytest.mark.timeout(60)


class Harness:
    """A service's pipeline running on the test's loop, its telemetry commits held until ``release()``."""

    def __init__(self, tmp_path: Path) -> None:
        config, _ = write_config(tmp_path, mqtt_url="mqtt://127.0.0.1:1", influx_url=None, devices=40)
        self.db = tmp_path / "firegrid.sqlite"
        self.service = Service(load_or_exit(str(config)))
        self.pipeline = self.service.pipeline
        self.gate = threading.Event()
        self.fail: Exception | None = None  # raised by the next telemetry commit once the gate opens
        self.acks: list[int] = []
        self.event_acks: list[int] = []
        self.committed: list[Job] = []
        self._changed = asyncio.Event()
        self._mid = 0
        real = self.pipeline._commit_sync
        gate = self.gate

        def held(job: Job) -> None:
            if job.readings:  # telemetry waits for the test; the fast lane's event jobs hold no reading
                assert gate.wait(30), "the test never released the telemetry commits"
                if self.fail is not None:
                    raise self.fail
            real(job)

        def committed(job: Job) -> None:
            self.committed.append(job)
            self._changed.set()

        def ack(into: list[int]) -> Callable[[list[tuple[int, int]]], int]:
            def record(items: list[tuple[int, int]]) -> int:
                into.extend(mid for _generation, mid in items)
                return len(items)

            return record

        self.pipeline._commit_sync = held  # type: ignore[method-assign]
        self.pipeline._on_committed = committed
        self.pipeline._ack = ack(self.acks)
        self.pipeline._ack_events = ack(self.event_acks)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.pipeline.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.set()
        self.pipeline.stop()
        assert self.task is not None
        try:
            await asyncio.wait_for(self.task, 20)
        finally:
            await self.service.close()

    def send(self, topic: str, payload: dict[str, object], *, lane: int = MAIN_LANE) -> int:
        self._mid += 1
        self.pipeline.submit(
            Incoming(
                generation=0,
                mid=self._mid,
                qos=1,
                topic=topic,
                payload=json.dumps(payload).encode(),
                received_ms=int(time.time() * 1000),
                lane=lane,
            )
        )
        return self._mid

    def telemetry(self, devices: list[int], *, alarm: bool = False) -> list[int]:
        now = int(time.time() * 1000)
        return [
            self.send(
                f"firegrid/b{d % 10:02d}/d{d:03d}/telemetry",
                {"ts": now - 5_000, "obscuration": 0.2, **({"alarm": True} if alarm else {})},
            )
            for d in devices
        ]

    def alarm_event(self, device: int) -> int:
        now = int(time.time() * 1000)
        return self.send(
            f"firegrid/b{device % 10:02d}/d{device:03d}/event", {"ts": now - 1_000, "type": "alarm"}, lane=EVENT_LANE
        )

    async def until(self, what: str, check: Callable[[], bool]) -> None:
        """Wait for the pipeline's state to satisfy ``check`` (re-checked after each commit or loop turn)."""
        deadline = time.monotonic() + 20
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self._changed.clear()
            with_timeout = asyncio.wait_for(self._changed.wait(), 0.05)
            try:
                await with_timeout
            except TimeoutError:
                pass

    def stage1_idle(self) -> bool:
        return not self.pipeline.backlog

    def alarms(self) -> list[str]:
        rows = store_rows(self.db, "SELECT device FROM alerts WHERE rule = 'smoke-detector-alarm' ORDER BY id")
        return [r["device"] for r in rows]


async def test_an_alarm_event_commits_ahead_of_held_telemetry_and_its_snapshot_waits(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        started = EngineState(h.db).load()["b00"]  # saved at start-up
        older = h.telemetry([0, 10, 1, 11])  # buildings b00 and b01
        await h.until("the first telemetry job at its commit", lambda: h.pipeline._ordered_busy is not None)
        older += h.telemetry([20, 2, 12])  # b00, b02: a second job, waiting
        await h.until("stage 1 idle", h.stage1_idle)
        event = h.alarm_event(30)  # d030 is in b00, which both waiting jobs touched
        await h.until("the event's commit", lambda: bool(h.event_acks))

        # The event's alarm is durable and acknowledged while every older telemetry message is still uncommitted.
        assert h.event_acks == [event]
        assert h.acks == []
        assert h.alarms() == ["d030"]
        assert h.pipeline.overtaken == 1
        # Its snapshot of b00 holds the older jobs' (uncommitted) readings: not written yet.
        assert EngineState(h.db).load()["b00"] == started

        h.gate.set()
        await h.until("everything committed", lambda: set(h.acks) == set(older))
        # PUBACKs of the telemetry session in the order of its PUBLISHes; the newest b00 state saved last.
        assert h.acks == older
        await h.until("the snapshots", lambda: not h.pipeline._ordered and h.pipeline._ordered_busy is None)
        assert EngineState(h.db).load()["b00"] == h.service.engine.snapshot("b00")
        seqs = [job.seq for job in h.committed]
        assert [j.seq for j in h.committed if j.event_acks] == [seqs[0]]  # the event's job committed first
        # the overtaking job's held snapshot was committed after every older job that touched b00
        held = [j for j in h.committed if "b00" in j.snapshots]
        assert held[-1].seq == max(j.seq for j in h.committed if j.event_acks)


async def test_an_event_in_an_untouched_building_saves_its_snapshot_with_its_alarm(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.telemetry([1, 11])  # b01 only
        await h.until("the telemetry job at its commit", lambda: h.pipeline._ordered_busy is not None)
        h.alarm_event(3)  # b03: no older job touched it
        await h.until("the event's commit", lambda: bool(h.event_acks))
        assert h.acks == [] and h.alarms() == ["d003"]
        assert EngineState(h.db).load()["b03"] == h.service.engine.snapshot("b03")


async def test_an_event_never_overtakes_an_older_transition_of_its_building(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        alarm = h.telemetry([10], alarm=True)  # d010's alarm telemetry: a transition in b00, held at its commit
        await h.until("the alarm job at its commit", lambda: h.pipeline._ordered_busy is not None)
        event = h.alarm_event(20)  # b00 as well
        await h.until("stage 1 idle", h.stage1_idle)
        assert h.pipeline.overtaken == 0
        assert h.event_acks == [] and h.alarms() == []  # queued behind the held job, not committed past it

        h.gate.set()
        await h.until("both committed", lambda: bool(h.event_acks) and bool(h.acks))
        assert h.alarms() == ["d010", "d020"]  # the store's order is the engine's
        assert h.acks == alarm and h.event_acks == [event]


async def test_a_later_event_waits_for_an_earlier_one_that_could_not_overtake(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        h.telemetry([10], alarm=True)  # b00's transition, held
        await h.until("the alarm job at its commit", lambda: h.pipeline._ordered_busy is not None)
        first = h.alarm_event(20)  # b00: must wait
        await h.until("stage 1 idle", h.stage1_idle)
        second = h.alarm_event(1)  # b01: free to go, but the fast lane's PUBACKs keep their order
        await h.until("stage 1 idle", h.stage1_idle)
        assert h.pipeline.overtaken == 0 and h.event_acks == []

        h.gate.set()
        await h.until("both events committed", lambda: len(h.event_acks) == 2)
        assert h.event_acks == [first, second]
        assert h.alarms() == ["d010", "d020", "d001"]


async def test_after_a_failed_commit_nothing_queued_behind_it_commits(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.__aenter__()
    assert h.task is not None
    h.telemetry([1])
    await h.until("the telemetry job at its commit", lambda: h.pipeline._ordered_busy is not None)
    h.telemetry([2])
    await h.until("stage 1 idle", h.stage1_idle)
    h.fail = OSError("disk full")
    h.gate.set()
    with pytest.raises(OSError, match="disk full"):
        await asyncio.wait_for(h.task, 20)  # fatal: the service stops, the broker redelivers what was not acked
    assert h.acks == [] and h.pipeline.commit_error == "OSError: disk full"
    await h.service.close()
