"""Drive a :class:`Simulation` in real time (or faster, or as fast as possible) into a broker and/or a file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from simulators.clock import PacedClock
from simulators.publish import device_of
from simulators.record import Recorder
from simulators.sim import Message, Simulation

FAST_STEP_MS = 1_000  # as-fast-as-possible runs advance a second at a time: orjson output holds 4 KB a message


class Publisher(Protocol):
    def publish(self, message: Message) -> bool: ...
    def drop(self, device: str) -> None: ...
    def restore(self, device: str) -> None: ...
    def flush(self, *, timeout: float = 10.0) -> bool: ...


@dataclass
class RunResult:
    messages: int = 0
    malformed: int = 0
    virtual_ms: int = 0
    flushed: bool = True


def drive(
    sim: Simulation,
    *,
    end_ms: int,
    clock: PacedClock | None = None,
    publisher: Publisher | None = None,
    device_wills: bool = False,
    recorder: Recorder | None = None,
    on_messages: Callable[[list[Message]], None] | None = None,
    stop: threading.Event | None = None,
    final_statuses: bool = True,
) -> RunResult:
    """Run ``sim`` until virtual ``end_ms``.

    With a ``clock`` each message is sent when the paced virtual clock reaches its time; without one the run goes as
    fast as possible (for ``--record`` and tests).  ``device_wills``: the publisher holds one connection per device
    and a disconnect is a dropped connection (the broker publishes the will), not an explicit ``offline``.
    """
    result = RunResult()

    def out(messages: list[Message]) -> None:
        if not messages:
            return
        if publisher is not None:
            for message in messages:
                if device_wills and message.label == "will":
                    publisher.drop(device_of(message.topic))
                    continue
                if device_wills and message.label == "reconnect":
                    publisher.restore(device_of(message.topic))
                publisher.publish(message)
        if recorder is not None:
            recorder.write(messages)
        if on_messages is not None:
            on_messages(messages)
        result.messages += len(messages)
        result.malformed += sum(1 for m in messages if m.expect)

    now = sim.now_ms
    while now < end_ms and not (stop is not None and stop.is_set()):
        if clock is None:
            now = min(end_ms, now + FAST_STEP_MS)
        else:
            due = sim.next_due_ms()
            target = end_ms if due is None else min(due, end_ms)
            delay = clock.wall_delay_s(target)
            if delay > 0:
                # wake at least 5 times a second so a stop request is noticed
                if stop is not None:
                    stop.wait(min(delay, 0.2))
                else:
                    time.sleep(min(delay, 0.2))
            now = min(end_ms, clock.now_ms())
        out(sim.advance(now))
    if final_statuses:
        out(sim.stop(now))
    result.virtual_ms = now - sim.start_ms
    if publisher is not None:
        result.flushed = publisher.flush(timeout=10.0)
    return result
