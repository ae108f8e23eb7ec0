"""The simulation core: one state machine per device, a virtual clock, and a queue of timed actions.

Nothing here does I/O or reads the wall clock.  ``Simulation.advance(until_ms)`` returns the messages due up to that
virtual time, in order; publishing (``simulators.publish``), recording (``simulators.record``) and checking (tests)
all consume the same stream, so a seed and a start time fix every byte that is sent.

Signals (per device, from its own seeded generator):

* heat: room temperature with a daily cycle (peak 15:00 China time), building offset and sensor noise;
* smoke: obscuration near zero with a slow bounded random-walk drift (dust) and noise; ``alarm`` is the detector's
  own decision at 3.5 %/m;
* extinguisher: pressure around the 1.2 MPa nominal, leaking very slowly, ``present`` on its bracket;
* every kind: battery draining, RSSI varying around a per-device mean.

Scenarios (``simulators.scenarios``) attach *effects* to devices (added smoke, added heat, a pressure loss, ...) and
schedule *actions* (an event, a status change, a malformed payload).  A device under an active effect reports every
``ACTIVE_INTERVAL_S`` instead of its normal interval, as real detectors report by exception when in alarm.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from simulators.model import ACTIVE_INTERVAL_S, DEFAULT_INTERVAL_S, Community, SimDevice

SMOKE_SELF_ALARM = 3.5  # %/m: the detector's own alarm decision
NOMINAL_PRESSURE = 1.2  # MPa
CHINA_UTC_OFFSET_H = 8
PER_DEVICE_RNG_LIMIT = 20_000
MAX_BUFFER = 1000  # samples a disconnected device keeps (the contract's batch limit)


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publish.  ``expect`` is the contract rejection reason a malformed message is meant to provoke."""

    t_ms: int  # virtual time it is sent
    topic: str
    payload: bytes
    retain: bool = False
    expect: str | None = None
    label: str = ""

    def record(self) -> dict[str, Any]:
        """The JSON-lines record ``firegrid replay`` reads: payload as sent (object/array, else the text)."""
        return {"t": self.t_ms, "topic": self.topic, "payload": payload_for_record(self.payload)}


def payload_for_record(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        # JSON text cannot hold invalid UTF-8; the replacement keeps the line readable (documented limitation).
        return payload.decode("utf-8", errors="replace")
    if text[:1] in ("{", "["):
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return text
        if isinstance(document, dict | list):
            # Only if re-serialising gives the same document back (e.g. not for huge ints orjson cannot hold).
            return document
    return text


class Installable(Protocol):
    """A scenario, as the simulation sees it: it schedules its effects and actions once, at the start."""

    def install(self, sim: Simulation) -> None: ...


class Effect(Protocol):
    """Something a scenario does to a device's signal between ``start_ms`` and ``end_ms`` (+ ``tail_ms``)."""

    start_ms: int
    end_ms: int | None
    tail_ms: int
    fast: bool  # while active the device reports every ACTIVE_INTERVAL_S

    def apply(self, device: DeviceSim, t_ms: int, values: dict[str, Any]) -> None: ...


class DeviceSim:
    """One simulated device: its signal state, its report schedule, and what scenarios do to it."""

    __slots__ = (
        "_battery0",
        "_drain_per_ms",
        "_drift",
        "_leak_per_ms",
        "_pressure0",
        "_rssi",
        "_t0",
        "_temp_offset",
        "buffer",
        "effects",
        "gen",
        "in_alarm",
        "interval_ms",
        "offline",
        "rng",
        "seq",
        "silent",
        "skew_ms",
        "spec",
    )

    def __init__(
        self, spec: SimDevice, *, seed: int, interval_s: float, start_ms: int, rng: random.Random | None = None
    ) -> None:
        self.spec = spec
        # A string seed is hashed with SHA-512 by random.Random: stable across runs and Python processes.
        # Load mode passes one shared generator instead (2.5 KB of state per Random is too much for 100k devices).
        self.rng = rng or random.Random(f"{seed}:{spec.id}")
        rng = self.rng
        # seq starts at the start time (epoch ms), so it keeps increasing across runs: the gateway rejects a seq it
        # saw within its replay window as a duplicate, and a drill run a minute after another must not collide.
        self.seq = start_ms
        self.interval_ms = int(min(interval_s, spec.heartbeat_s) * 1000)
        self.effects: list[Effect] = []
        self.silent = False
        self.offline = False
        self.skew_ms = 0
        self.buffer: list[dict[str, Any]] = []
        self.gen = 0  # bumps when the report schedule changes, so stale queue entries are skipped
        self.in_alarm = False  # the detector's own alarm decision in its latest sample (for the `alarm` event)
        self._t0 = start_ms
        self._drift = rng.uniform(0.0, 0.08)
        self._temp_offset = rng.uniform(-1.5, 2.5)
        self._pressure0 = NOMINAL_PRESSURE + rng.uniform(-0.04, 0.04)
        self._leak_per_ms = rng.uniform(0.0, 0.01) / 86_400_000 / 30  # up to 0.01 MPa a month
        self._battery0 = rng.uniform(55.0, 100.0)
        self._drain_per_ms = rng.uniform(0.5, 2.0) / 86_400_000 / 30  # 0.5–2 % a month
        self._rssi = rng.uniform(-95.0, -55.0)

    # --- signal ---------------------------------------------------------------------------------------------------

    def baseline(self, t_ms: int) -> dict[str, Any]:
        rng = self.rng
        kind = self.spec.kind
        values: dict[str, Any] = {}
        if kind == "smoke":
            self._drift = min(0.3, max(0.0, self._drift + rng.gauss(0.0, 0.004)))
            values["obscuration"] = max(0.0, self._drift + rng.gauss(0.0, 0.01))
        elif kind == "heat":
            hour = (t_ms / 3_600_000 + CHINA_UTC_OFFSET_H) % 24
            daily = 3.0 * math.sin(2 * math.pi * (hour - 9) / 24)  # peak at 15:00 local
            values["celsius"] = 22.0 + self._temp_offset + daily + rng.gauss(0.0, 0.1)
        elif kind == "extinguisher":
            values["pressure_mpa"] = self._pressure0 - self._leak_per_ms * (t_ms - self._t0) + rng.gauss(0.0, 0.002)
            values["present"] = True
            values["obstructed"] = False
        values["battery"] = self._battery0 - self._drain_per_ms * (t_ms - self._t0)
        values["rssi"] = self._rssi + rng.gauss(0.0, 2.0)
        return values

    def active(self, t_ms: int) -> bool:
        for effect in self.effects:
            if (
                effect.fast
                and effect.start_ms <= t_ms
                and (effect.end_ms is None or t_ms < effect.end_ms + effect.tail_ms)
            ):
                return True
        return False

    def sample(self, t_ms: int, *, drill: bool = False) -> dict[str, Any]:
        """The next telemetry sample at virtual time ``t_ms`` (advances the signal state and ``seq``)."""
        values = self.baseline(t_ms)
        for effect in self.effects:
            if effect.start_ms <= t_ms and (effect.end_ms is None or t_ms < effect.end_ms + effect.tail_ms):
                effect.apply(self, t_ms, values)
        self.seq += 1
        out: dict[str, Any] = {"ts": t_ms + self.skew_ms, "seq": self.seq}
        kind = self.spec.kind
        if kind == "smoke":
            obscuration = min(100.0, max(0.0, values["obscuration"]))
            out["obscuration"] = round(obscuration, 3)
            out["alarm"] = obscuration >= SMOKE_SELF_ALARM
        elif kind == "heat":
            out["celsius"] = round(min(1000.0, max(-50.0, values["celsius"])), 2)
        elif kind == "extinguisher":
            out["pressure_mpa"] = round(min(5.0, max(0.0, values["pressure_mpa"])), 3)
            out["present"] = bool(values["present"])
            out["obstructed"] = bool(values["obstructed"])
        elif kind == "panel_point":
            for state in ("fire_alarm", "part_fault", "supervisory", "power_fault"):
                out[state] = bool(values.get(state, False))
        out["battery"] = round(min(100.0, max(0.0, values["battery"])), 1)
        out["rssi"] = round(min(20.0, max(-150.0, values["rssi"])))
        if drill:
            out["drill"] = True
        return out


Action = Callable[["Simulation", int], None]


class Simulation:
    """A community under scenarios, advanced on a virtual clock.

    ``statuses``: publish retained ``online`` at start and ``offline`` on disconnect/stop (off for ``verify``,
    which must not overwrite the retained status of a deployment's real devices).
    """

    def __init__(
        self,
        community: Community,
        *,
        seed: int,
        start_ms: int,
        drill: bool = False,
        statuses: bool = True,
        intervals: Mapping[str, float] | None = None,
        scenarios: Iterable[Installable] = (),
    ) -> None:
        self.community = community
        self.seed = seed
        self.start_ms = start_ms
        self.drill = drill
        self.statuses = statuses
        self._intervals = {**DEFAULT_INTERVAL_S, **(intervals or {})}
        self.devices: dict[str, DeviceSim] = {}
        self._queue: list[tuple[int, int, Callable[[int], None]]] = []
        self._order = 0
        self._out: list[Message] = []
        self.now_ms = start_ms
        # Each device has its own generator (adding a scenario does not change any other device's signal), except
        # in very large communities, where 2.5 KB of generator state per device would cost gigabytes: they share
        # one, which is still deterministic because the queue's order is.
        shared = random.Random(f"{seed}:shared") if len(community.devices) > PER_DEVICE_RNG_LIMIT else None
        for spec in community.devices:
            device = DeviceSim(spec, seed=seed, interval_s=self._intervals[spec.kind], start_ms=start_ms, rng=shared)
            self.devices[spec.id] = device
            if statuses:
                self.at(start_ms, self._status_action(device, online=True))
            # Spread first reports over the interval so a community does not report in lockstep.
            self._schedule_report(device, start_ms + int(device.rng.random() * device.interval_ms))
        for scenario in scenarios:
            scenario.install(self)

    # --- scheduling -----------------------------------------------------------------------------------------------

    def at(self, t_ms: int, action: Callable[[int], None]) -> None:
        self._order += 1
        heapq.heappush(self._queue, (t_ms, self._order, action))

    def _schedule_report(self, device: DeviceSim, t_ms: int) -> None:
        device.gen += 1
        gen = device.gen

        def report(now: int) -> None:
            if device.gen == gen:
                self._report(device, now)

        self.at(t_ms, report)

    def report_now(self, device: DeviceSim, t_ms: int) -> None:
        """Report at ``t_ms`` (report by exception: a scenario just changed something) and go on from there."""
        self._schedule_report(device, t_ms)

    def _report(self, device: DeviceSim, now: int) -> None:
        if not device.silent:
            sample = device.sample(now, drill=self.drill)
            if device.offline:
                device.buffer.append(sample)
                del device.buffer[:-MAX_BUFFER]
            else:
                self.emit(now, self.community.topic(device.spec, "telemetry"), orjson.dumps(sample))
            alarm = sample.get("alarm") is True
            if alarm and not device.in_alarm:
                # entering alarm: the `alarm` event too, which the gateway reads on its fast lane, ahead of any
                # telemetry backlog (docs/telemetry.md); stamped like the sample that showed it
                self.event(device, now, "alarm")
            device.in_alarm = alarm
        interval = ACTIVE_INTERVAL_S * 1000 if device.active(now) else device.interval_ms
        jitter = 1.0 - device.rng.uniform(0.0, 0.04)  # early, never late: the interval may be the heartbeat period
        self._schedule_report(device, now + max(1, int(interval * jitter)))

    # --- output ---------------------------------------------------------------------------------------------------

    def emit(
        self,
        t_ms: int,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expect: str | None = None,
        label: str = "",
    ) -> None:
        self._out.append(Message(t_ms, topic, payload, retain, expect, label))

    def event(self, device: DeviceSim, t_ms: int, event_type: str, detail: str | None = None) -> None:
        body: dict[str, Any] = {"ts": t_ms + device.skew_ms, "type": event_type}
        if detail:
            body["detail"] = detail
        device.seq += 1
        body["seq"] = device.seq
        if self.drill:
            body["drill"] = True
        if not device.offline and not device.silent:
            self.emit(t_ms, self.community.topic(device.spec, "event"), orjson.dumps(body))

    def status(self, device: DeviceSim, t_ms: int, *, online: bool, label: str = "") -> None:
        if self.statuses:
            self.emit(
                t_ms,
                self.community.topic(device.spec, "status"),
                b"online" if online else b"offline",
                retain=True,
                label=label,
            )

    def _status_action(self, device: DeviceSim, *, online: bool) -> Callable[[int], None]:
        return lambda now: self.status(device, now, online=online)

    def disconnect(self, device: DeviceSim, t_ms: int) -> None:
        """The device loses its broker connection: its last will (``offline``) is published, it buffers samples."""
        if device.offline:
            return
        device.offline = True
        # "will": a publisher with one connection per device drops the connection instead and lets the broker
        # publish the real last will; pooled connections publish this message in its place.
        self.status(device, t_ms, online=False, label="will")

    def reconnect(self, device: DeviceSim, t_ms: int) -> None:
        """Back online: retained ``online``, then what it buffered as one telemetry array."""
        if not device.offline:
            return
        device.offline = False
        self.status(device, t_ms, online=True, label="reconnect")
        if device.buffer:
            batch, device.buffer = device.buffer, []
            self.emit(t_ms, self.community.topic(device.spec, "telemetry"), orjson.dumps(batch))

    def advance(self, until_ms: int) -> list[Message]:
        """Run every action due up to and including ``until_ms``; return the messages they produced, in order."""
        queue = self._queue
        while queue and queue[0][0] <= until_ms:
            t_ms, _, action = heapq.heappop(queue)
            self.now_ms = t_ms
            action(t_ms)
        self.now_ms = max(self.now_ms, until_ms)
        out, self._out = self._out, []
        return out

    def next_due_ms(self) -> int | None:
        return self._queue[0][0] if self._queue else None

    def stop(self, t_ms: int) -> list[Message]:
        """A clean stop: every connected device says ``offline``, as its last will would."""
        self.advance(t_ms)
        for device in self.devices.values():
            if not device.offline:
                self.status(device, t_ms, online=False)
        out, self._out = self._out, []
        return out
