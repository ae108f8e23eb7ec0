"""The scenarios: what each does to the simulated devices, and what the shipped default rules (``rules/defaults.yaml``)
should raise for it.  ``SCENARIOS`` maps the names of the spec language (:mod:`simulators.scenarios`) to them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson

from simulators.clock import DurationError, parse_duration_ms
from simulators.model import Community, SimDevice
from simulators.scenario_base import (
    Expectation,
    Overlay,
    Scenario,
    ScenarioError,
    SetValue,
    affect,
    fire_heat,
    fire_smoke,
)
from simulators.sim import NOMINAL_PRESSURE, DeviceSim, Simulation


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
        start = self.onset_ms(sim)
        end = None if self.duration_ms is None else start + self.duration_ms
        for spec, delay, metric in plan:
            onset = start + delay
            if end is not None and onset >= end:
                continue
            fn = fire_smoke if metric == "obscuration" else fire_heat
            affect(sim, sim.devices[spec.id], Overlay(metric, fn, onset, end, decay_s=60.0))

    def expectations(self, community: Community) -> list[Expectation]:
        origin, plan = self._floor_plan(community)
        floor_devices = [(d, delay) for d, delay, _ in plan if d.floor == origin.floor]
        out = [self.expect_at(origin, "fire origin", "fire", within_ms=SMOKE_ALARM_DEADLINE_MS)]
        # Confirmation needs a second smoke detector or a heat alarm on the floor within the correlation window.
        second = [delay for d, delay in floor_devices if d.id != origin.id and d.kind == "smoke"]
        heat = [delay for d, delay in floor_devices if d.kind == "heat"]
        if second or heat:
            # a heat alarm needs a rate-of-rise window (up to ~60 s) after the onset
            ready = min([s + SMOKE_ALARM_DEADLINE_MS for s in second] + [h + 90_000 for h in heat])
            out.append(
                self.expect_on_floor(
                    origin.building,
                    origin.floor,
                    "fire confirmed on the floor",
                    "fire",
                    confirmed=True,
                    within_ms=ready,
                )
            )
        # The fire spreads: alarms on the floor and the floor above are allowed, not demanded (also the
        # repeated-alarms trouble a detector earns after a few drills).
        for floor in (origin.floor, None if origin.floor is None else origin.floor + 1):
            for severity in ("fire", "warning", "trouble"):
                out.append(self.expect_on_floor(origin.building, floor, "fire spreading", severity, required=False))
        return out


@dataclass
class Cooking(Scenario):
    """Cooking smoke at one detector: obscuration up to ~4.5 %/m for about two minutes, no heat anywhere.
    A deployment must raise an *unconfirmed* fire alarm for it and no confirmed fire."""

    kinds: tuple[str, ...] = ("smoke",)

    def install(self, sim: Simulation) -> None:
        peak = self.param_float("peak", 4.5)
        onset = self.onset_ms(sim)
        smoke = Overlay(
            "obscuration", lambda s: min(peak, peak * s / 30.0), onset, onset + self._duration(), decay_s=20.0
        )
        affect(sim, self.device_in(sim), smoke)

    def _duration(self) -> int:
        return self.duration_or(120_000)

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        return [
            self.expect_at(d, "cooking smoke alarm", "fire", confirmed=False, within_ms=SMOKE_ALARM_DEADLINE_MS),
            self.expect_on_floor(
                d.building, d.floor, "cooking smoke is not a confirmed fire", "fire", confirmed=True, absent=True
            ),
            self.expect_at(d, "pre-alarm allowed", "warning", required=False),
            REPEATED(d.building, d.floor, d.id, self.at_ms),
        ]

    def end_ms(self) -> int | None:
        return self.at_ms + self._duration()


@dataclass
class CallPoint(Scenario):
    """A manual call point pressed (fire at once); ``reset`` after the duration if one is given."""

    kinds: tuple[str, ...] = ("call_point",)

    def install(self, sim: Simulation) -> None:
        device = self.device_in(sim)
        at = self.onset_ms(sim)
        sim.at(at, lambda now: sim.event(device, now, "pressed", self.params.get("detail")))
        if self.duration_ms is not None:
            sim.at(at + self.duration_ms, lambda now: sim.event(device, now, "reset"))

    def expectations(self, community: Community) -> list[Expectation]:
        return [self.expect_at(self.pick(community), "call point pressed", "fire", within_ms=DELIVERY_MS)]


@dataclass
class PanelAlarm(Scenario):
    """A fire alarm panel declares a fire at one of its points (``fire_alarm: true``, as its UITD reports it), back
    to normal after the duration if one is given."""

    kinds: tuple[str, ...] = ("panel_point",)

    def install(self, sim: Simulation) -> None:
        device = self.device_in(sim)
        at = self.onset_ms(sim)
        end = None if self.duration_ms is None else at + self.duration_ms
        affect(sim, device, SetValue("fire_alarm", True, at, end))
        if end is not None:
            sim.at(end, lambda now: sim.report_now(device, now))

    def expectations(self, community: Community) -> list[Expectation]:
        return [self.expect_at(self.pick(community), "panel fire alarm", "fire", within_ms=DELIVERY_MS)]


@dataclass
class ExtinguisherRemoved(Scenario):
    """An extinguisher taken off its bracket (``present: false``) and returned after the duration (default 90 s)."""

    kinds: tuple[str, ...] = ("extinguisher",)

    def _duration(self) -> int:
        return self.duration_or(90_000)

    def install(self, sim: Simulation) -> None:
        device = self.device_in(sim)
        at = self.onset_ms(sim)
        affect(sim, device, SetValue("present", False, at, at + self._duration()))
        sim.at(at + self._duration(), lambda now: sim.report_now(device, now))

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        if self._duration() < 30_000:
            return []
        return [self.expect_at(d, "extinguisher removed (30 s)", "supervisory", within_ms=30_000 + DELIVERY_MS)]

    def end_ms(self) -> int | None:
        return self.at_ms + self._duration()


@dataclass
class Leak(Scenario):
    """A slow pressure leak: ``rate`` MPa per minute (default 0.02: below 1.0 MPa after about ten minutes)."""

    kinds: tuple[str, ...] = ("extinguisher",)

    def _rate(self) -> float:
        return self.param_float("rate", 0.02)

    def install(self, sim: Simulation) -> None:
        self.device_in(sim).effects.append(_Leak(self._rate(), self.onset_ms(sim)))

    def expectations(self, community: Community) -> list[Expectation]:
        crossing = int((NOMINAL_PRESSURE + 0.04 - 1.0) / self._rate() * 60_000)
        within = crossing + 60_000 + 300_000 + DELIVERY_MS
        return [self.expect_at(self.pick(community), "pressure below 1.0 MPa (60 s)", "supervisory", within_ms=within)]


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
        device = self.device_in(sim)
        at = self.onset_ms(sim)

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
        return [self.expect_at(d, "device silent (2 heartbeats)", "trouble", within_ms=silence + 60_000 + DELIVERY_MS)]


@dataclass
class Flapping(Scenario):
    """A detector that keeps crossing its threshold: ``high`` (10 s) in alarm, then ``low`` (40 s) clear, again and
    again for the duration (6 m).  The defaults outlast the default rules' ``for`` (5 s) and ``clear_after``
    (30 s), so each cycle raises and clears, and the flapping rule (more than 6 changes in 10 minutes) holds it."""

    kinds: tuple[str, ...] = ("smoke",)

    def _duration(self) -> int:
        return self.duration_or(360_000)

    def install(self, sim: Simulation) -> None:
        high = self.param_ms("high", 10_000) / 1000
        cycle = high + self.param_ms("low", 40_000) / 1000
        at = self.onset_ms(sim)
        alarm = Overlay(
            "obscuration", lambda s: 5.0 if s % cycle < high else 0.0, at, at + self._duration(), decay_s=0.5
        )
        affect(sim, self.device_in(sim), alarm)

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        return [
            self.expect_at(d, "flapping detector alarms", "fire", within_ms=SMOKE_ALARM_DEADLINE_MS),
            self.expect_at(d, "flapping detector may be reported as trouble", "trouble", required=False),
        ]

    def end_ms(self) -> int | None:
        return self.at_ms + self._duration()


@dataclass
class LowBattery(Scenario):
    """The battery drops to ``level`` % (default 15, below the 20 % trouble threshold)."""

    def install(self, sim: Simulation) -> None:
        at = self.onset_ms(sim)
        end = None if self.duration_ms is None else at + self.duration_ms
        affect(sim, self.device_in(sim), SetValue("battery", self.param_float("level", 15.0), at, end, fast=False))

    def expectations(self, community: Community) -> list[Expectation]:
        d = self.pick(community)
        if self.param_float("level", 15.0) >= 20:
            return []
        return [self.expect_at(d, "low battery (60 s)", "trouble", within_ms=60_000 + DELIVERY_MS)]


@dataclass
class Skew(Scenario):
    """The device's clock is off by ``skew`` (default 10m ahead: beyond the contract's 5 minutes, so the gateway
    replaces its timestamps by the receipt time and counts ``clock_skew``)."""

    def install(self, sim: Simulation) -> None:
        device = self.device_in(sim)
        skew = self.params.get("skew", "10m")
        sign = -1 if skew.startswith("-") else 1
        try:
            skew_ms = sign * parse_duration_ms(skew.lstrip("+-"))
        except DurationError as exc:
            raise ScenarioError(f"{self.spec}: skew: {exc}") from None
        at = self.onset_ms(sim)
        sim.at(at, lambda now: setattr(device, "skew_ms", skew_ms))
        if self.duration_ms is not None:
            sim.at(at + self.duration_ms, lambda now: setattr(device, "skew_ms", 0))


@dataclass
class Malformed(Scenario):
    """A burst of payloads that break the contract, one per rejection reason (see ``malformed_set``)."""

    def install(self, sim: Simulation) -> None:
        device = self.device_in(sim)
        at = self.onset_ms(sim)
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
        return self.duration_or(60_000)

    def install(self, sim: Simulation) -> None:
        at = self.onset_ms(sim)
        for spec in self.devices(sim.community):
            device = sim.devices[spec.id]
            sim.at(at, functools.partial(sim.disconnect, device))
            sim.at(at + self._duration(), functools.partial(sim.reconnect, device))

    def expectations(self, community: Community) -> list[Expectation]:
        if self._duration() < 30_000:
            return []
        within = 30_000 + DELIVERY_MS
        return [
            self.expect_at(d, "device offline (30 s)", "trouble", within_ms=within) for d in self.devices(community)
        ]

    def end_ms(self) -> int | None:
        return self.at_ms + self._duration()


SCENARIOS: dict[str, type[Scenario]] = {
    "fire": Fire,
    "cooking": Cooking,
    "callpoint": CallPoint,
    "call_point": CallPoint,
    "panel-alarm": PanelAlarm,
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
