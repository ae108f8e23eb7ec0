"""Timed, composable scenarios: ``NAME@TARGET[+OFFSET][/DURATION][,key=value...]`` or a YAML scenario file.

Targets: a device id (``yg01-sd-02a``), a building (``b07``: the scenario picks a fitting device), a floor
(``b07:3F``, ``b07:B1``) or ``*`` (every device, for ``disconnect``).  Offsets and durations: ``500ms``, ``30s``,
``2m``, ``1h``; the offset counts from the start of the simulation.

Each scenario also says what a deployment running the shipped default rules (issue 4, ``rules/defaults.yaml``)
should raise — its :class:`Expectation` list — which ``firegrid verify`` checks against the live alert stream.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from simulators.clock import DurationError, format_ms, parse_duration_ms
from simulators.model import Community, ModelError, SimDevice, format_floor, parse_floor
from simulators.sim import NOMINAL_PRESSURE, DeviceSim, Simulation


class ScenarioError(ValueError):
    """A scenario spec or file is wrong; the message says which part."""


@dataclass(frozen=True, slots=True)
class Expectation:
    """An alert a deployment should raise (or, with ``absent``, must not raise) because of a scenario.

    Times are offsets from the simulation start.  ``required=False`` marks alerts that are *allowed* (the fire may
    spread to more detectors) but not demanded, so they do not count as unexpected.
    """

    label: str
    severity: str
    building: str
    floor: int | None = None
    device: str | None = None
    confirmed: bool | None = None  # None: either
    after_ms: int = 0
    within_ms: int = 30_000
    absent: bool = False
    required: bool = True
    any_device: bool = False  # floor/building scope: match alerts of any device there, or of the scope itself

    def matches(self, alert: Mapping_) -> bool:
        """Does an observed alert (a dict with severity, building, floor, device, confirmed) fit?"""
        if str(alert.get("severity", "")).lower() != self.severity or alert.get("building") != self.building:
            return False
        if self.device is not None:
            if alert.get("device") != self.device:
                return False
        else:
            if self.floor is not None and alert.get("floor") != self.floor:
                return False
            if not self.any_device and alert.get("device") not in (None, ""):
                return False
        if self.confirmed is True and alert.get("confirmed") is not True:
            return False
        return not (self.confirmed is False and alert.get("confirmed") is True)

    def describe(self) -> str:
        where = self.device or (
            f"{self.building}:{format_floor(self.floor)}" if self.floor is not None else self.building
        )
        what = self.severity + (" confirmed" if self.confirmed else " unconfirmed" if self.confirmed is False else "")
        if self.absent:
            return f"no {what} at {where} ({self.label})"
        return f"{what} at {where} ({self.label})"


Mapping_ = dict[str, Any]


@dataclass(frozen=True)
class Target:
    building: str
    floor: int | None = None
    device: str | None = None
    everything: bool = False


def resolve_target(community: Community, text: str) -> Target:
    text = text.strip()
    if text in ("*", "all"):
        return Target(building="*", everything=True)
    if ":" in text:
        building, floor = text.split(":", 1)
        if community.building(building) is None:
            raise ScenarioError(f"unknown building {building!r} in target {text!r}")
        try:
            return Target(building=building, floor=parse_floor(floor))
        except ModelError as exc:
            raise ScenarioError(str(exc)) from None
    device = community.device(text)
    if device is not None:
        return Target(building=device.building, floor=device.floor, device=device.id)
    if community.building(text) is not None:
        return Target(building=text)
    raise ScenarioError(f"unknown target {text!r}: not a device, building or building:floor of the community")


@dataclass
class Scenario:
    """Base: a named thing that happens to a target at ``at_ms`` for ``duration_ms`` (None: until the end)."""

    name: str
    target: Target
    at_ms: int = 0
    duration_ms: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    spec: str = ""

    kinds: tuple[str, ...] = ()  # device kinds the scenario can drive when given a building or floor

    def devices(self, community: Community) -> list[SimDevice]:
        """The devices this scenario drives (in community order)."""
        t = self.target
        if t.everything:
            return list(community.devices)
        if t.device:
            device = community.device(t.device)
            assert device is not None
            return [device]
        return [d for d in community.in_building(t.building, floor=t.floor) if not self.kinds or d.kind in self.kinds]

    def pick(self, community: Community) -> SimDevice:
        """The one device a single-device scenario acts on: the target device, or the first fitting one."""
        devices = self.devices(community)
        if not devices:
            raise ScenarioError(f"{self.spec or self.name}: no {'/'.join(self.kinds) or 'device'} at the target")
        device = devices[0]
        if self.kinds and device.kind not in self.kinds:
            raise ScenarioError(
                f"{self.spec or self.name}: {device.id} is a {device.kind}, needs {'/'.join(self.kinds)}"
            )
        return device

    def param_ms(self, key: str, default: int) -> int:
        try:
            return parse_duration_ms(self.params[key]) if key in self.params else default
        except DurationError as exc:
            raise ScenarioError(f"{self.spec}: {key}: {exc}") from None

    def param_float(self, key: str, default: float) -> float:
        try:
            return float(self.params.get(key, default))
        except ValueError:
            raise ScenarioError(f"{self.spec}: {key} must be a number") from None

    def install(self, sim: Simulation) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def expectations(self, community: Community) -> list[Expectation]:
        return []

    def end_ms(self) -> int | None:
        """Offset at which the scenario is over (for choosing a run length)."""
        return None if self.duration_ms is None else self.at_ms + self.duration_ms


# --- signal effects ---------------------------------------------------------------------------------------------


@dataclass
class Overlay:
    """Adds ``fn(seconds since onset)`` to a metric; after ``end_ms`` the addition decays with ``decay_s``."""

    metric: str
    fn: Callable[[float], float]
    start_ms: int
    end_ms: int | None = None
    decay_s: float = 30.0
    tail_ms: int = 0
    fast: bool = True

    def __post_init__(self) -> None:
        if self.end_ms is not None:
            self.tail_ms = int(self.decay_s * 5 * 1000)

    def apply(self, device: DeviceSim, t_ms: int, values: dict[str, Any]) -> None:
        if self.metric not in values:
            return
        if self.end_ms is not None and t_ms >= self.end_ms:
            peak = self.fn((self.end_ms - self.start_ms) / 1000)
            values[self.metric] += peak * math.exp(-(t_ms - self.end_ms) / 1000 / self.decay_s)
        else:
            values[self.metric] += self.fn((t_ms - self.start_ms) / 1000)


@dataclass
class SetValue:
    metric: str
    value: Any
    start_ms: int
    end_ms: int | None = None
    tail_ms: int = 0
    fast: bool = True

    def apply(self, device: DeviceSim, t_ms: int, values: dict[str, Any]) -> None:
        if self.end_ms is None or t_ms < self.end_ms:
            values[self.metric] = self.value


def _reporter(sim: Simulation, device: DeviceSim) -> Callable[[int], None]:
    return lambda now: sim.report_now(device, now)


def fire_smoke(seconds: float) -> float:
    """A t-squared growing fire's smoke at a detector: 3 %/m after ~8 s, capped at 25 %/m."""
    return min(25.0, 0.05 * seconds * seconds)


def fire_heat(seconds: float) -> float:
    """Heat at a detector: rises 15 °C/min (well above the 8.3 °C/min rate-of-rise criterion), capped at +400 °C."""
    return min(400.0, 0.25 * seconds)


# --- the scenarios --------------------------------------------------------------------------------------------------


def REPEATED(building: str, floor: int | None, device: str, at_ms: int) -> Expectation:
    """Allowed: the count rule turns a detector that alarmed several times in a day into a trouble."""
    return Expectation("repeated alarms allowed", "trouble", building, floor, device, after_ms=at_ms, required=False)


SMOKE_ALARM_DEADLINE_MS = 30_000  # 3 %/m after ~8 s, held 5 s, plus delivery
DELIVERY_MS = 15_000  # margin for the pipeline, on top of what the rule itself needs


@dataclass
class Fire(Scenario):
    """A growing fire: smoke at the origin, then the floor's other smoke detectors (+15 s) and heat detectors
    (+20 s, rising 15 °C/min), then the floor above (smoke +60 s, heat +90 s)."""

    kinds: tuple[str, ...] = ("smoke",)

    def _floor_plan(self, community: Community) -> tuple[SimDevice, list[tuple[SimDevice, int, str]]]:
        if self.target.device:
            origin = self.pick(community)
        else:
            smoke = [d for d in self.devices(community) if d.kind == "smoke"]
            if not smoke:
                raise ScenarioError(f"{self.spec or self.name}: no smoke detector at the target")
            origin = smoke[0]
        floor = origin.floor
        plan: list[tuple[SimDevice, int, str]] = [(origin, 0, "celsius" if origin.kind == "heat" else "obscuration")]
        spread = self.param_ms("spread", 15_000)
        for d in community.in_building(origin.building, floor=floor):
            if d.id == origin.id:
                continue
            if d.kind == "smoke":
                plan.append((d, spread, "obscuration"))
            elif d.kind == "heat":
                plan.append((d, spread + 5_000, "celsius"))
        if floor is not None:
            for d in community.in_building(origin.building, floor=floor + 1):
                if d.kind == "smoke":
                    plan.append((d, 4 * spread, "obscuration"))
                elif d.kind == "heat":
                    plan.append((d, 6 * spread, "celsius"))
        return origin, plan

    def install(self, sim: Simulation) -> None:
        _, plan = self._floor_plan(sim.community)
        for spec, delay, metric in plan:
            device = sim.devices[spec.id]
            onset = sim.start_ms + self.at_ms + delay
            end = None if self.duration_ms is None else sim.start_ms + self.at_ms + self.duration_ms
            if end is not None and onset >= end:
                continue
            fn = fire_smoke if metric == "obscuration" else fire_heat
            device.effects.append(Overlay(metric, fn, onset, end, decay_s=60.0))
            sim.at(onset, _reporter(sim, device))

    def expectations(self, community: Community) -> list[Expectation]:
        origin, plan = self._floor_plan(community)
        floor_devices = [(d, delay) for d, delay, _ in plan if d.floor == origin.floor]
        out = [
            Expectation(
                "fire origin",
                "fire",
                origin.building,
                origin.floor,
                origin.id,
                after_ms=self.at_ms,
                within_ms=SMOKE_ALARM_DEADLINE_MS,
            )
        ]
        # Confirmation needs a second smoke detector or a heat alarm on the floor within the correlation window.
        second = [delay for d, delay in floor_devices if d.id != origin.id and d.kind == "smoke"]
        heat = [delay for d, delay in floor_devices if d.kind == "heat"]
        if second or heat:
            # a heat alarm needs a rate-of-rise window (up to ~60 s) after the onset
            ready = min([s + SMOKE_ALARM_DEADLINE_MS for s in second] + [h + 90_000 for h in heat])
            out.append(
                Expectation(
                    "fire confirmed on the floor",
                    "fire",
                    origin.building,
                    origin.floor,
                    None,
                    confirmed=True,
                    after_ms=self.at_ms,
                    within_ms=ready,
                    any_device=True,
                )
            )
        # The fire spreads: alarms on the floor and the floor above are allowed, not demanded (also the
        # repeated-alarms trouble a detector earns after a few drills).
        for floor in (origin.floor, None if origin.floor is None else origin.floor + 1):
            for severity in ("fire", "warning", "trouble"):
                out.append(
                    Expectation(
                        "fire spreading",
                        severity,
                        origin.building,
                        floor,
                        None,
                        after_ms=self.at_ms,
                        required=False,
                        any_device=True,
                    )
                )
        return out


@dataclass
class Cooking(Scenario):
    """Cooking smoke at one detector: obscuration up to ~4.5 %/m for about two minutes, no heat anywhere.
    A deployment must raise an *unconfirmed* fire alarm for it and no confirmed fire."""

    kinds: tuple[str, ...] = ("smoke",)

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        peak = self.param_float("peak", 4.5)
        duration = self.duration_ms if self.duration_ms is not None else 120_000
        onset = sim.start_ms + self.at_ms
        device.effects.append(
            Overlay("obscuration", lambda s: min(peak, peak * s / 30.0), onset, onset + duration, decay_s=20.0)
        )
        sim.at(onset, lambda now: sim.report_now(device, now))

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        return [
            Expectation(
                "cooking smoke alarm",
                "fire",
                d.building,
                d.floor,
                d.id,
                confirmed=False,
                after_ms=self.at_ms,
                within_ms=SMOKE_ALARM_DEADLINE_MS,
            ),
            Expectation(
                "cooking smoke is not a confirmed fire",
                "fire",
                d.building,
                d.floor,
                None,
                confirmed=True,
                after_ms=self.at_ms,
                absent=True,
                any_device=True,
            ),
            Expectation("pre-alarm allowed", "warning", d.building, d.floor, d.id, after_ms=self.at_ms, required=False),
            REPEATED(d.building, d.floor, d.id, self.at_ms),
        ]

    def end_ms(self) -> int | None:
        return self.at_ms + (self.duration_ms if self.duration_ms is not None else 120_000)


@dataclass
class CallPoint(Scenario):
    """A manual call point pressed (fire at once); ``reset`` after the duration if one is given."""

    kinds: tuple[str, ...] = ("call_point",)

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        at = sim.start_ms + self.at_ms
        sim.at(at, lambda now: sim.event(device, now, "pressed", self.params.get("detail")))
        if self.duration_ms is not None:
            sim.at(at + self.duration_ms, lambda now: sim.event(device, now, "reset"))

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        return [
            Expectation(
                "call point pressed", "fire", d.building, d.floor, d.id, after_ms=self.at_ms, within_ms=DELIVERY_MS
            )
        ]


@dataclass
class ExtinguisherRemoved(Scenario):
    """An extinguisher taken off its bracket (``present: false``) and returned after the duration (default 90 s)."""

    kinds: tuple[str, ...] = ("extinguisher",)

    def _duration(self) -> int:
        return self.duration_ms if self.duration_ms is not None else 90_000

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        at = sim.start_ms + self.at_ms
        device.effects.append(SetValue("present", False, at, at + self._duration()))
        sim.at(at, lambda now: sim.report_now(device, now))
        sim.at(at + self._duration(), lambda now: sim.report_now(device, now))

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        if self._duration() < 30_000:
            return []
        return [
            Expectation(
                "extinguisher removed (30 s)",
                "supervisory",
                d.building,
                d.floor,
                d.id,
                after_ms=self.at_ms,
                within_ms=30_000 + DELIVERY_MS,
            )
        ]

    def end_ms(self) -> int | None:
        return self.at_ms + self._duration()


@dataclass
class Leak(Scenario):
    """A slow pressure leak: ``rate`` MPa per minute (default 0.02: below 1.0 MPa after about ten minutes)."""

    kinds: tuple[str, ...] = ("extinguisher",)

    def _rate(self) -> float:
        return self.param_float("rate", 0.02)

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        at = sim.start_ms + self.at_ms
        rate = self._rate()
        device.effects.append(_Leak(rate, at))

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        crossing = int((NOMINAL_PRESSURE + 0.04 - 1.0) / self._rate() * 60_000)
        return [
            Expectation(
                "pressure below 1.0 MPa (60 s)",
                "supervisory",
                d.building,
                d.floor,
                d.id,
                after_ms=self.at_ms,
                within_ms=crossing + 60_000 + 300_000 + DELIVERY_MS,
            )
        ]


@dataclass
class _Leak:
    rate_per_min: float
    start_ms: int
    end_ms: int | None = None
    tail_ms: int = 0
    fast: bool = False  # a leak is slow: the device keeps its normal interval

    def apply(self, device: DeviceSim, t_ms: int, values: dict[str, Any]) -> None:
        if "pressure_mpa" in values:
            values["pressure_mpa"] -= self.rate_per_min * (t_ms - self.start_ms) / 60_000


@dataclass
class Silent(Scenario):
    """The device stops sending anything (dead battery, broken radio) for the duration (default: for good)."""

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        at = sim.start_ms + self.at_ms

        def speak_again(now: int) -> None:
            device.silent = False
            sim.report_now(device, now)

        sim.at(at, lambda now: setattr(device, "silent", True))
        if self.duration_ms is not None:
            sim.at(at + self.duration_ms, speak_again)

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        silence = 2 * d.heartbeat_s * 1000
        if self.duration_ms is not None and self.duration_ms < silence:
            return []
        return [
            Expectation(
                "device silent (2 heartbeats)",
                "trouble",
                d.building,
                d.floor,
                d.id,
                after_ms=self.at_ms,
                within_ms=silence + 60_000 + DELIVERY_MS,
            )
        ]


@dataclass
class Flapping(Scenario):
    """A detector that keeps crossing its threshold: ``high`` (10 s) in alarm, then ``low`` (40 s) clear, again and
    again for the duration (6 m).  The defaults outlast the default rules' ``for`` (5 s) and ``clear_after``
    (30 s), so each cycle raises and clears, and the flapping rule (more than 6 changes in 10 minutes) holds it."""

    kinds: tuple[str, ...] = ("smoke",)

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        high = self.param_ms("high", 10_000) / 1000
        cycle = high + self.param_ms("low", 40_000) / 1000
        at = sim.start_ms + self.at_ms
        end = at + (self.duration_ms if self.duration_ms is not None else 360_000)
        device.effects.append(Overlay("obscuration", lambda s: 5.0 if s % cycle < high else 0.0, at, end, decay_s=0.5))
        sim.at(at, lambda now: sim.report_now(device, now))

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        return [
            Expectation(
                "flapping detector alarms",
                "fire",
                d.building,
                d.floor,
                d.id,
                after_ms=self.at_ms,
                within_ms=SMOKE_ALARM_DEADLINE_MS,
            ),
            Expectation(
                "flapping detector may be reported as trouble",
                "trouble",
                d.building,
                d.floor,
                d.id,
                after_ms=self.at_ms,
                required=False,
            ),
        ]

    def end_ms(self) -> int | None:
        return self.at_ms + (self.duration_ms if self.duration_ms is not None else 360_000)


@dataclass
class LowBattery(Scenario):
    """The battery drops to ``level`` % (default 15, below the 20 % trouble threshold)."""

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        at = sim.start_ms + self.at_ms
        level = self.param_float("level", 15.0)
        end = None if self.duration_ms is None else at + self.duration_ms
        device.effects.append(SetValue("battery", level, at, end, fast=False))
        sim.at(at, lambda now: sim.report_now(device, now))

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        if self.param_float("level", 15.0) >= 20:
            return []
        return [
            Expectation(
                "low battery (60 s)",
                "trouble",
                d.building,
                d.floor,
                d.id,
                after_ms=self.at_ms,
                within_ms=60_000 + DELIVERY_MS,
            )
        ]


@dataclass
class Skew(Scenario):
    """The device's clock is off by ``skew`` (default 10m ahead: beyond the contract's 5 minutes, so the gateway
    replaces its timestamps by the receipt time and counts ``clock_skew``)."""

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        skew = self.params.get("skew", "10m")
        sign = -1 if skew.startswith("-") else 1
        try:
            skew_ms = sign * parse_duration_ms(skew.lstrip("+-"))
        except DurationError as exc:
            raise ScenarioError(f"{self.spec}: skew: {exc}") from None
        at = sim.start_ms + self.at_ms
        sim.at(at, lambda now: setattr(device, "skew_ms", skew_ms))
        if self.duration_ms is not None:
            sim.at(at + self.duration_ms, lambda now: setattr(device, "skew_ms", 0))


@dataclass
class Malformed(Scenario):
    """A burst of payloads that break the contract, one per rejection reason (see ``malformed_set``)."""

    def install(self, sim: Simulation) -> None:
        device = sim.devices[self.pick(sim.community).id]
        at = sim.start_ms + self.at_ms
        only = set(filter(None, self.params.get("only", "").split("+")))

        def burst(now: int) -> None:
            for label, topic, payload, reason in malformed_set(sim, device, now):
                if not only or label in only:
                    sim.emit(now, topic, payload, expect=reason, label=label)

        sim.at(at, burst)


@dataclass
class Disconnect(Scenario):
    """The devices lose the broker for the duration (default 60 s): last will ``offline``, samples buffered, then
    ``online`` and the buffer as one telemetry array."""

    def _duration(self) -> int:
        return self.duration_ms if self.duration_ms is not None else 60_000

    def install(self, sim: Simulation) -> None:
        at = sim.start_ms + self.at_ms
        for spec in self.devices(sim.community):
            device = sim.devices[spec.id]
            sim.at(at, functools.partial(sim.disconnect, device))
            sim.at(at + self._duration(), functools.partial(sim.reconnect, device))

    def expectations(self, community: Community) -> list[Expectation]:
        if self._duration() < 30_000:
            return []
        return [
            Expectation(
                "device offline (30 s)",
                "trouble",
                d.building,
                d.floor,
                d.id,
                after_ms=self.at_ms,
                within_ms=30_000 + DELIVERY_MS,
            )
            for d in self.devices(community)
        ]

    def end_ms(self) -> int | None:
        return self.at_ms + self._duration()


SCENARIOS: dict[str, type[Scenario]] = {
    "fire": Fire,
    "cooking": Cooking,
    "callpoint": CallPoint,
    "call_point": CallPoint,
    "extinguisher-removed": ExtinguisherRemoved,
    "removed": ExtinguisherRemoved,
    "leak": Leak,
    "silent": Silent,
    "flapping": Flapping,
    "low-battery": LowBattery,
    "skew": Skew,
    "malformed": Malformed,
    "disconnect": Disconnect,
}


def malformed_set(sim: Simulation, device: DeviceSim, now: int) -> list[tuple[str, str, bytes, str]]:
    """(label, topic, payload, the contract ``Reason`` it must be rejected with)."""
    c = sim.community
    spec = device.spec
    telemetry = c.topic(spec, "telemetry")
    event = c.topic(spec, "event")
    metric = {"smoke": "obscuration", "heat": "celsius", "extinguisher": "pressure_mpa"}.get(spec.kind)
    good = orjson.dumps({"ts": now})
    cases: list[tuple[str, str, bytes, str]] = [
        ("not_json", telemetry, b'{"ts": ' + str(now).encode() + b", oops", "not_json"),
        ("not_utf8", telemetry, b'{"ts": 1, "fault": "\xff\xfe"}', "not_utf8"),
        ("wrong_shape", telemetry, b'"hello"', "wrong_shape"),
        ("empty_batch", telemetry, b"[]", "wrong_shape"),
        ("too_many", telemetry, orjson.dumps([{"ts": now}] * 1001), "too_many"),
        ("oversize", telemetry, orjson.dumps({"ts": now, "fault": "x" * 70_000}), "oversize"),
        ("wrong_type", telemetry, orjson.dumps({"ts": now, "battery": "87"}), "wrong_type"),
        ("out_of_range", telemetry, orjson.dumps({"ts": now, "battery": 150}), "out_of_range"),
        ("non_finite", telemetry, b'{"ts": ' + str(now).encode() + b', "battery": NaN}', "non_finite"),
        ("unknown_metric", telemetry, orjson.dumps({"ts": now, "humidity": 40}), "unknown_metric"),
        ("bad_timestamp", telemetry, orjson.dumps({"ts": "yesterday"}), "bad_timestamp"),
        ("spoofed_id", telemetry, orjson.dumps({"ts": now, "device": "someone-else"}), "spoofed_id"),
        ("unknown_event", event, orjson.dumps({"ts": now, "type": "exploded"}), "unknown_event"),
        ("bad_topic", f"{c.prefix}/{spec.building}/{spec.id}/telemetry/extra", good, "bad_topic"),
        ("bad_status", c.topic(spec, "status"), b"maybe", "wrong_shape"),
    ]
    if metric is not None:
        cases.append(("metric_out_of_range", telemetry, orjson.dumps({"ts": now, metric: -999}), "out_of_range"))
    return cases


# --- parsing --------------------------------------------------------------------------------------------------------


def parse_spec(text: str, community: Community) -> Scenario:
    """``fire@b07:3F+30s``, ``extinguisher-removed@yg01-ex-01+10s/2m``, ``leak@yg01-ex-02,rate=0.05``."""
    head, *rest = text.strip().split(",")
    params: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(f"{text}: parameter {item!r} is not key=value")
        params[key.strip()] = value.strip()
    name, sep, target_part = head.partition("@")
    if not sep:
        raise ScenarioError(f"{text}: expected NAME@TARGET[+OFFSET][/DURATION]; names: {', '.join(SCENARIOS)}")
    duration_ms: int | None = None
    if "/" in target_part:
        target_part, duration = target_part.split("/", 1)
        duration_ms = _duration(text, duration)
    at_ms = 0
    if "+" in target_part:
        target_part, offset = target_part.split("+", 1)
        at_ms = _duration(text, offset)
    return build(
        name.strip(), target_part, at_ms=at_ms, duration_ms=duration_ms, params=params, spec=text, community=community
    )


def _duration(spec: str, text: str) -> int:
    try:
        return parse_duration_ms(text)
    except DurationError as exc:
        raise ScenarioError(f"{spec}: {exc}") from None


def build(
    name: str,
    target: str,
    *,
    at_ms: int,
    duration_ms: int | None,
    params: dict[str, str],
    spec: str,
    community: Community,
) -> Scenario:
    cls = SCENARIOS.get(name)
    if cls is None:
        raise ScenarioError(f"{spec}: unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    scenario = cls(
        name=name,
        target=resolve_target(community, target),
        at_ms=at_ms,
        duration_ms=duration_ms,
        params=params,
        spec=spec,
    )
    if scenario.target.everything and cls is not Disconnect:
        raise ScenarioError(f"{spec}: only 'disconnect' can target every device")
    # Validate now, not mid-run: the target must have a fitting device (e.g. a floor with a smoke detector).
    if not scenario.target.everything:
        scenario.pick(community)
    scenario.expectations(community)
    return scenario


@dataclass(frozen=True)
class ScenarioFile:
    name: str
    scenarios: tuple[Scenario, ...]
    expectations: tuple[Expectation, ...] | None  # None: derive from the scenarios
    duration_ms: int | None


def load_file(path: str | Path, community: Community) -> ScenarioFile:
    """A YAML scenario file::

    name: floor-3-drill
    duration: 3m                      # optional run length
    scenarios:
      - fire@b07:3F+30s               # the short form, or
      - {type: cooking, target: yg01-sd-02a, at: 10s, duration: 2m, params: {peak: 5}}
    expect:                           # optional: replaces the derived expectations
      - {severity: fire, device: yg01-sd-02a, within: 30s}
      - {severity: fire, building: yg01, floor: 2, confirmed: true, absent: true}
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise ScenarioError(f"{path}: expected a mapping with a 'scenarios' list")
    unknown = set(data) - {"name", "duration", "scenarios", "expect"}
    if unknown:
        raise ScenarioError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    scenarios: list[Scenario] = []
    for i, item in enumerate(data["scenarios"]):
        where = f"{path}: scenarios[{i}]"
        try:
            scenarios.append(_file_scenario(where, item, community))
        except ScenarioError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    expectations: list[Expectation] | None = None
    if data.get("expect") is not None:
        expectations = [_expectation(f"{path}: expect[{i}]", e, community) for i, e in enumerate(data["expect"])]
    duration = data.get("duration")
    return ScenarioFile(
        name=str(data.get("name") or path.stem),
        scenarios=tuple(scenarios),
        expectations=None if expectations is None else tuple(expectations),
        duration_ms=None if duration is None else _duration(str(path), str(duration)),
    )


def _file_scenario(where: str, item: Any, community: Community) -> Scenario:
    if isinstance(item, str):
        return parse_spec(item, community)
    if not isinstance(item, dict) or "type" not in item or "target" not in item:
        raise ScenarioError("expected a spec string or a mapping with type and target")
    extra = set(item) - {"type", "target", "at", "duration", "params"}
    if extra:
        raise ScenarioError(f"unknown keys {', '.join(sorted(extra))}")
    duration = item.get("duration")
    return build(
        str(item["type"]),
        str(item["target"]),
        at_ms=_duration(where, str(item.get("at", "0s"))),
        duration_ms=None if duration is None else _duration(where, str(duration)),
        params={str(k): str(v) for k, v in (item.get("params") or {}).items()},
        spec=f"{item['type']}@{item['target']}",
        community=community,
    )


_EXPECT_KEYS = {
    "label",
    "severity",
    "building",
    "floor",
    "device",
    "confirmed",
    "after",
    "within",
    "absent",
    "required",
}


def _expectation(where: str, item: Any, community: Community) -> Expectation:
    if not isinstance(item, dict) or "severity" not in item:
        raise ScenarioError(f"{where}: expected a mapping with at least 'severity'")
    extra = set(item) - _EXPECT_KEYS
    if extra:
        raise ScenarioError(f"{where}: unknown keys {', '.join(sorted(extra))}")
    severity = str(item["severity"]).lower()
    if severity not in ("fire", "supervisory", "trouble", "warning"):
        raise ScenarioError(f"{where}: severity must be fire, supervisory, trouble or warning")
    device = item.get("device")
    building = item.get("building")
    floor = item.get("floor")
    if device is not None:
        spec = community.device(str(device))
        if spec is None:
            raise ScenarioError(f"{where}: unknown device {device!r}")
        building = building or spec.building
        floor = spec.floor if floor is None else floor
    if building is None:
        raise ScenarioError(f"{where}: give a device or a building")
    if isinstance(floor, str):
        floor = parse_floor(floor)
    return Expectation(
        label=str(item.get("label") or "from file"),
        severity=severity,
        building=str(building),
        floor=floor,
        device=None if device is None else str(device),
        confirmed=item.get("confirmed"),
        after_ms=_duration(where, str(item.get("after", "0s"))),
        within_ms=_duration(where, str(item.get("within", "30s"))),
        absent=bool(item.get("absent", False)),
        required=bool(item.get("required", True)),
        any_device=device is None,
    )


HELP: dict[str, str] = {
    "fire": "fire@b07:3F+30s[,spread=15s]  growing fire: smoke, then the floor's detectors and heat, then upstairs",
    "cooking": "cooking@DEVICE+10s[/2m][,peak=4.5]  one detector's smoke, no heat: an unconfirmed alarm",
    "callpoint": "callpoint@DEVICE+5s[/1m]  call point pressed (reset after the duration); alias call_point",
    "extinguisher-removed": "extinguisher-removed@DEVICE[/90s]  off its bracket, back after; alias removed",
    "leak": "leak@DEVICE[,rate=0.02]  pressure falls RATE MPa/min",
    "silent": "silent@DEVICE+30s[/20m]  sends nothing (for good without a duration)",
    "flapping": "flapping@DEVICE[/6m][,high=10s,low=40s]  in alarm HIGH, clear LOW, again and again",
    "low-battery": "low-battery@DEVICE[,level=15]  battery at LEVEL %",
    "skew": "skew@DEVICE[,skew=10m]  clock ahead (or -5m behind)",
    "malformed": "malformed@DEVICE[,only=not_json+oversize]  one payload per contract rejection reason",
    "disconnect": "disconnect@b07|DEVICE|*+60s[/60s]  broker lost: will 'offline', buffer, 'online' + batch",
}


def describe_all() -> str:
    return "\n".join(f"  {line}" for line in HELP.values())


__all__ = ["Expectation", "Scenario", "ScenarioError", "ScenarioFile", "format_ms", "load_file", "parse_spec"]
