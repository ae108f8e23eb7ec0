"""Load mode: ``firegrid simulate --rate R --duration D`` holds R messages/s across all devices, paced.

Message ``i`` is due at ``t0 + i / R``: the loop sends what is due, then sleeps until the next one, so the
broker sees a steady stream (a few messages per millisecond at most), not bursts once a second.  When the machine
or the broker cannot keep up, at most 100 ms of backlog is caught up; older lost time is given up (no burst), and
the summary's rate shows the shortfall.  Devices take turns
in a fixed shuffled order, so each reports every ``devices / R`` seconds.  Payloads come from the same device models
as the community simulation, with one shared generator (a per-device ``random.Random`` costs 2.5 KB, too much for
100,000 devices) — still deterministic under ``--seed`` and ``--start``: message ``i``'s timestamp is
``start + i * 1000 / R``, whatever the wall clock did.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from simulators.model import Community
from simulators.progress import Progress
from simulators.record import Recorder
from simulators.sim import DeviceSim, Message

if TYPE_CHECKING:  # paho loads only when there is a broker to publish to
    from simulators.publish import MqttPublisher


@dataclass
class LoadResult:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    per_second: list[int] = field(default_factory=list)  # messages handed to the client in each wall second

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self, *, target_rate: float, qos: int, devices: int, published: bool = True) -> str:
        full = self.per_second[1:-1] or self.per_second  # first and last seconds are partial
        low, high = (min(full), max(full)) if full else (0, 0)
        deviation = abs(self.rate - target_rate) / target_rate * 100 if target_rate else 0.0
        how = f"at QoS {qos}" if published else "(dry run: generated, not published)"
        return (
            f"sent {self.sent:,} messages from {devices:,} devices in {self.elapsed_s:.2f}s {how}: "
            f"{self.rate:,.1f} msg/s (target {target_rate:,.0f}, {deviation:.2f} % off); "
            f"per second min {low:,} max {high:,}; acknowledged {self.acked:,}; errors {self.errors:,}"
        )


class LoadGenerator:
    def __init__(self, community: Community, *, seed: int, start_ms: int, rate: float, drill: bool = False) -> None:
        if rate <= 0:
            raise ValueError("--rate must be positive")
        self.community = community
        self.rate = rate
        self.start_ms = start_ms
        self.drill = drill
        shared = random.Random(f"{seed}:load")
        self._devices: list[DeviceSim] = []
        for spec in community.devices:
            self._devices.append(DeviceSim(spec, seed=seed, interval_s=60, start_ms=start_ms, rng=shared))
        shared.shuffle(self._devices)
        self._topics = [community.topic(d.spec, "telemetry") for d in self._devices]

    def message(self, index: int) -> Message:
        """Message ``index`` of the run (must be asked for in order: device state advances)."""
        slot = index % len(self._devices)
        device = self._devices[slot]
        t_ms = self.start_ms + int(index * 1000 / self.rate)
        payload = orjson.dumps(device.sample(t_ms, drill=self.drill))
        return Message(t_ms, self._topics[slot], payload)


def run_load(
    generator: LoadGenerator,
    *,
    duration_s: float,
    publisher: MqttPublisher | None,
    recorder: Recorder | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> LoadResult:
    rate = generator.rate
    total = int(rate * duration_s)
    result = LoadResult()
    publish = None if publisher is None else publisher.publish
    stats = None if publisher is None else publisher.stats
    batch: list[Message] = []
    t0 = started = time.monotonic()
    second_end = t0 + 1.0
    in_second = 0
    sent = 0
    max_lag = max(1, int(rate * 0.1))
    while sent < total:
        if stop is not None and stop.is_set():
            break
        now = time.monotonic()
        due = min(total, int((now - t0) * rate) + 1)
        if due - sent > max_lag:
            # More than 100 ms behind (the broker or the machine cannot keep up): give the lost time up rather than
            # catch up in a burst.  The achieved rate then shows the shortfall honestly.
            t0 += (due - sent - max_lag) / rate
            due = sent + max_lag
        while sent < due:
            message = generator.message(sent)
            if publish is not None:
                publish(message)
            if recorder is not None:
                batch.append(message)
            sent += 1
            in_second += 1
        if recorder is not None and len(batch) >= 1000:
            recorder.write(batch)
            batch = []
        now = time.monotonic()
        while now >= second_end:
            result.per_second.append(in_second)
            in_second = 0
            second_end += 1.0
        if progress is not None:
            progress.update(sent=sent, errors=stats.errors if stats else 0)
        wait = t0 + sent / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    result.elapsed_s = time.monotonic() - started
    if in_second:
        result.per_second.append(in_second)
    if recorder is not None:
        recorder.write(batch)
    result.sent = sent
    if publisher is not None:
        publisher.flush(timeout=30.0)
    if stats is not None:
        result.acked = stats.acked
        result.errors = stats.errors
    if progress is not None:
        progress.update(sent=sent, errors=result.errors, force=True)
        progress.close()
    return result
