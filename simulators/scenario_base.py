"""What a scenario is: its target, the alerts it should cause (:class:`Expectation`) and the effects it puts on a
device's signal.  The scenarios themselves are in :mod:`simulators.scenario_kinds`; the spec language and scenario
files in :mod:`simulators.scenarios`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulators.clock import DurationError, parse_duration_ms
from simulators.model import Community, ModelError, SimDevice, format_floor, parse_floor
from simulators.sim import DeviceSim, Simulation


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

    def matches(self, alert: dict[str, Any]) -> bool:
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

    def duration_or(self, default_ms: int) -> int:
        """The duration, or the kind's default for a scenario that always ends."""
        return self.duration_ms if self.duration_ms is not None else default_ms

    def device_in(self, sim: Simulation) -> DeviceSim:
        """The simulated device a single-device scenario acts on."""
        return sim.devices[self.pick(sim.community).id]

    def onset_ms(self, sim: Simulation) -> int:
        return sim.start_ms + self.at_ms

    def expect_at(
        self,
        device: SimDevice,
        label: str,
        severity: str,
        *,
        within_ms: int = 30_000,
        confirmed: bool | None = None,
        required: bool = True,
    ) -> Expectation:
        """An alert of this one device, from the scenario's start on."""
        return Expectation(
            label,
            severity,
            device.building,
            device.floor,
            device.id,
            confirmed=confirmed,
            after_ms=self.at_ms,
            within_ms=within_ms,
            required=required,
        )

    def expect_on_floor(
        self,
        building: str,
        floor: int | None,
        label: str,
        severity: str,
        *,
        within_ms: int = 30_000,
        confirmed: bool | None = None,
        absent: bool = False,
        required: bool = True,
    ) -> Expectation:
        """An alert of any device on a floor (or of the floor itself), from the scenario's start on."""
        return Expectation(
            label,
            severity,
            building,
            floor,
            None,
            confirmed=confirmed,
            after_ms=self.at_ms,
            within_ms=within_ms,
            absent=absent,
            required=required,
            any_device=True,
        )

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


def affect(sim: Simulation, device: DeviceSim, effect: Overlay | SetValue) -> None:
    """Put ``effect`` on the device and have it report when the effect begins (not at its next interval)."""
    device.effects.append(effect)
    sim.at(effect.start_ms, lambda now: sim.report_now(device, now))


def fire_smoke(seconds: float) -> float:
    """A t-squared growing fire's smoke at a detector: 3 %/m after ~8 s, capped at 25 %/m."""
    return min(25.0, 0.05 * seconds * seconds)


def fire_heat(seconds: float) -> float:
    """Heat at a detector: rises 15 °C/min (well above the 8.3 °C/min rate-of-rise criterion), capped at +400 °C."""
    return min(400.0, 0.25 * seconds)
