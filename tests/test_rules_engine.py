"""The rules engine, table-driven per rule kind, with the edges: exactly at threshold, gaps, out-of-order samples,
clock jumps, restore mid-``for``, maintenance, drills, seeding after a restart.  Pure: no servers needed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import yaml

from rules.engine import Engine, alert_key
from rules.model import RuleConfig
from rules.ruleset import RuleSet
from rules.types import (
    ActiveAlert,
    AlertTransition,
    DeviceEvent,
    DeviceRef,
    MaintenanceWindow,
    Reading,
    Severity,
    StatusChange,
)

T0 = 1_800_000_000_000


def ms(seconds: float) -> int:
    return T0 + round(seconds * 1000)


def ref(device: str, kind: str = "smoke", *, building: str = "b1", floor: int | None = 1) -> DeviceRef:
    return DeviceRef(building=building, device=device, kind=kind, floor=floor, grid="g1")


def rules(text: str) -> tuple[RuleConfig, ...]:
    return tuple(RuleConfig.model_validate(r) for r in yaml.safe_load(text))


class Driver:
    """Feeds an engine with a compact script and records every transition as (transition, rule, device, seconds)."""

    def __init__(
        self,
        rule_text: str,
        devices: Sequence[DeviceRef] = (),
        *,
        heartbeat: dict[str, int] | None = None,
        by_device: dict[str, int] | None = None,
    ) -> None:
        self.rule_set = RuleSet(
            rules=rules(rule_text), heartbeat_s_by_kind=heartbeat or {}, heartbeat_s_by_device=by_device or {}
        )
        self.refs = {d.device: d for d in devices}
        self.engine = Engine(self.rule_set, registry=self.refs)
        self.log: list[AlertTransition] = []

    def ref(self, device: str) -> DeviceRef:
        return self.refs.get(device) or ref(device)

    def r(self, seconds: float, device: str, *, drill: bool = False, **values: Any) -> list[AlertTransition]:
        return self._keep(self.engine.process(Reading(self.ref(device), ms(seconds), values, drill=drill)))

    def e(self, seconds: float, device: str, etype: str, *, drill: bool = False) -> list[AlertTransition]:
        return self._keep(self.engine.process(DeviceEvent(self.ref(device), ms(seconds), etype, drill=drill)))

    def s(self, seconds: float, device: str, online: bool) -> list[AlertTransition]:
        return self._keep(self.engine.process(StatusChange(self.ref(device), ms(seconds), online)))

    def tick(self, seconds: float) -> list[AlertTransition]:
        return self._keep(self.engine.tick(ms(seconds)))

    def _keep(self, out: list[AlertTransition]) -> list[AlertTransition]:
        self.log.extend(out)
        return out

    def timeline(self) -> list[tuple[str, str, str | None, float]]:
        return [(t.transition, t.rule, t.device, (t.ts_ms - T0) / 1000) for t in self.log]

    def run(self, script: Sequence[tuple[Any, ...]]) -> list[tuple[str, str, str | None, float]]:
        for step in script:
            op, *args = step
            if op == "r":
                seconds, device, values = args
                self.r(seconds, device, **values)
            elif op == "t":
                self.tick(args[0])
            elif op == "e":
                self.e(args[0], args[1], args[2])
            elif op == "s":
                self.s(args[0], args[1], args[2])
        return self.timeline()


SMOKE = """
- {id: smoke, kind: threshold, severity: fire, metric: obscuration, above: 3.0, for: 5s, clear_below: 1.5}
"""
SMOKE_INSTANT = """
- {id: smoke, kind: threshold, severity: fire, metric: obscuration, above: 3.0, clear_below: 1.5}
"""
SMOKE_CLEAR_AFTER = """
- {id: smoke, kind: threshold, severity: fire, metric: obscuration, above: 3.0, clear_below: 1.5, clear_after: 10s}
"""
BATTERY = """
- {id: battery, kind: threshold, severity: trouble, metric: battery, below: 20, clear_above: 25}
"""
PRESSURE = """
- {id: pressure, kind: threshold, severity: supervisory, metric: pressure_mpa, outside: [1.0, 1.4]}
"""


def R(seconds: float, value: float, metric: str = "obscuration", device: str = "d1") -> tuple[Any, ...]:
    return ("r", seconds, device, {metric: value})


THRESHOLD_CASES = [
    # (name, rules, script, expected timeline)
    ("exactly at threshold raises", SMOKE_INSTANT, [R(0, 3.0)], [("raised", "smoke", "d1", 0)]),
    ("just below does not", SMOKE_INSTANT, [R(0, 2.999), R(1, 2.9)], []),
    ("held shorter than for", SMOKE, [R(0, 4), R(2, 4), R(4, 4), R(4.5, 1.0), R(9, 1.0)], []),
    ("held exactly for", SMOKE, [R(0, 4), R(2, 4), R(5, 4)], [("raised", "smoke", "d1", 5)]),
    ("for elapses on tick", SMOKE, [R(0, 4), ("t", 4.9), ("t", 7)], [("raised", "smoke", "d1", 5)]),
    ("dip restarts for", SMOKE, [R(0, 4), R(3, 2.0), R(4, 4), R(8, 4), R(9, 4)], [("raised", "smoke", "d1", 9)]),
    (
        "hysteresis band holds, clear below clears",
        SMOKE_INSTANT,
        [R(0, 4), R(1, 2.0), R(2, 1.5), R(3, 1.49)],
        [("raised", "smoke", "d1", 0), ("cleared", "smoke", "d1", 3)],
    ),
    (
        "clear_after waits, a blip back resets it",
        SMOKE_CLEAR_AFTER,
        [R(0, 4), R(1, 1.0), R(5, 4.0), R(6, 1.0), R(15, 1.0), R(16, 1.0)],
        [("raised", "smoke", "d1", 0), ("cleared", "smoke", "d1", 16)],
    ),
    (
        "clear_after elapses on tick",
        SMOKE_CLEAR_AFTER,
        [R(0, 4), R(1, 1.0), ("t", 10.9), ("t", 30)],
        [("raised", "smoke", "d1", 0), ("cleared", "smoke", "d1", 11)],
    ),
    (
        "below: at the bound raises, clears above clear_above",
        BATTERY,
        [R(0, 20, "battery"), R(1, 24, "battery"), R(2, 25, "battery"), R(3, 25.5, "battery")],
        [("raised", "battery", "d1", 0), ("cleared", "battery", "d1", 3)],
    ),
    ("below: just above does not", BATTERY, [R(0, 20.01, "battery")], []),
    (
        "outside: bounds are inside the range",
        PRESSURE,
        [R(0, 1.0, "pressure_mpa"), R(1, 1.4, "pressure_mpa"), R(2, 0.99, "pressure_mpa"), R(3, 1.2, "pressure_mpa")],
        [("raised", "pressure", "d1", 2), ("cleared", "pressure", "d1", 3)],
    ),
    ("outside: above the range", PRESSURE, [R(0, 1.41, "pressure_mpa")], [("raised", "pressure", "d1", 0)]),
    (
        "out-of-order sample is ignored (newest wins)",
        SMOKE,
        [R(10, 4), R(8, 0.0), R(15, 4)],
        [("raised", "smoke", "d1", 15)],
    ),
    ("late alarm sample does not raise", SMOKE_INSTANT, [R(10, 0.5), R(9, 9.0)], []),
    (
        "device clock jumps back: timers re-base and still raise",
        SMOKE,
        [R(100, 4), R(-100, 4), R(-95, 4)],
        [("raised", "smoke", "d1", -95)],
    ),
    (
        "device clock jumps forward: treated as held",
        SMOKE,
        [R(0, 4), R(3600, 4)],
        [("raised", "smoke", "d1", 3600)],
    ),
    (
        "gap with a tick in it raises at since+for",
        SMOKE,
        [R(0, 4), ("t", 600), R(600, 4)],
        [("raised", "smoke", "d1", 5)],
    ),
    ("engine clock going back is ignored", SMOKE, [R(0, 4), ("t", 3), ("t", 1), ("t", 4)], []),
    (
        "engine clock jumps forward: due timers fire at their own time",
        SMOKE,
        [("t", 0), R(0, 4), ("t", 86_400)],
        [("raised", "smoke", "d1", 5)],
    ),
]


@pytest.mark.parametrize(
    ("name", "rule_text", "script", "expected"), THRESHOLD_CASES, ids=[c[0] for c in THRESHOLD_CASES]
)
def test_threshold(name: str, rule_text: str, script: list[tuple[Any, ...]], expected: list[Any]) -> None:
    assert Driver(rule_text).run(script) == expected


ROR = """
- {id: ror, kind: rate_of_rise, severity: fire, metric: celsius, rate_per_min: 8.3, window: 60s, min_samples: 4}
"""


def ramp(start: float, per_min: float, seconds: Sequence[float], spike: dict[float, float] | None = None) -> list[Any]:
    spike = spike or {}
    return [("r", s, "h1", {"celsius": spike.get(s, start + per_min * s / 60)}) for s in seconds]


ROR_CASES = [
    ("10 C/min over the window raises", ramp(25, 10, range(0, 61, 10)), [("raised", "ror", "h1", 40)]),
    ("exactly 8.3 C/min raises", ramp(25, 8.3, range(0, 61, 10)), [("raised", "ror", "h1", 40)]),
    ("5 C/min does not", ramp(25, 5, range(0, 121, 10)), []),
    ("steady with one hot spike does not", ramp(25, 0, range(0, 121, 10), {50: 90.0}), []),
    ("steady with one cold spike does not", ramp(25, 0, range(0, 121, 10), {40: -40.0}), []),
    ("too few samples in the window", ramp(25, 20, [0, 30, 60]), []),
    ("a gap is not a rise", ramp(25, 0, [0, 10, 20]) + ramp(60, 0, [300, 310, 320, 330, 340]), []),
    (
        "rise then plateau clears",
        ramp(25, 12, range(0, 61, 10)) + ramp(37, 0, range(70, 191, 10)),
        [("raised", "ror", "h1", 40), ("cleared", "ror", "h1", 90)],
    ),
]


@pytest.mark.parametrize(("name", "script", "expected"), ROR_CASES, ids=[c[0] for c in ROR_CASES])
def test_rate_of_rise(name: str, script: list[Any], expected: list[Any]) -> None:
    assert Driver(ROR).run(script) == expected


STATE = """
- {id: missing, kind: state, severity: supervisory, metric: present, equals: false, for: 30s}
- {id: alarm, kind: state, severity: fire, metric: alarm, equals: true}
"""

STATE_CASES = [
    (
        "present false for 30 s",
        [("r", 0, "x1", {"present": False}), ("r", 29, "x1", {"present": False}), ("t", 30)],
        [("raised", "missing", "x1", 30)],
    ),
    ("returned in time", [("r", 0, "x1", {"present": False}), ("r", 29, "x1", {"present": True}), ("t", 60)], []),
    (
        "removed, raised, returned",
        [("r", 0, "x1", {"present": False}), ("t", 31), ("r", 40, "x1", {"present": True})],
        [("raised", "missing", "x1", 30), ("cleared", "missing", "x1", 40)],
    ),
    (
        "detector's own alarm at once",
        [("r", 0, "s1", {"alarm": False}), ("r", 1, "s1", {"alarm": True}), ("r", 2, "s1", {"alarm": False})],
        [("raised", "alarm", "s1", 1), ("cleared", "alarm", "s1", 2)],
    ),
]


@pytest.mark.parametrize(("name", "script", "expected"), STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_state(name: str, script: list[Any], expected: list[Any]) -> None:
    assert Driver(STATE).run(script) == expected


EVENTS = """
- {id: pressed, kind: event, severity: fire, event: pressed, clear_on: [reset]}
- {id: fault, kind: event, severity: trouble, event: fault, clear_on: [reset], clear_after: 1h}
"""

EVENT_CASES = [
    ("pressed raises at once", [("e", 0, "c1", "pressed")], [("raised", "pressed", "c1", 0)]),
    (
        "pressed twice is one alert, reset clears",
        [("e", 0, "c1", "pressed"), ("e", 5, "c1", "pressed"), ("e", 60, "c1", "reset")],
        [("raised", "pressed", "c1", 0), ("cleared", "pressed", "c1", 60)],
    ),
    (
        "fault clears an hour after its last repeat",
        [("e", 0, "c1", "fault"), ("e", 1800, "c1", "fault"), ("t", 3600), ("t", 5400)],
        [("raised", "fault", "c1", 0), ("cleared", "fault", "c1", 5400)],
    ),
    ("reset without alert is nothing", [("e", 0, "c1", "reset")], []),
    (
        # the jump back moves the fault's last occurrence to the device's new time: its clear timer moves earlier
        # too (it was lost until something else woke the device; found by the snapshot/restore property)
        "fault clears on time after the device clock jumps back",
        [
            ("r", 3600, "c1", {"battery": 90}),
            ("e", 3600, "c1", "fault"),
            ("r", 1000, "c1", {"battery": 90}),
            ("t", 4600),
        ],
        [("raised", "fault", "c1", 3600), ("cleared", "fault", "c1", 4600)],
    ),
    (
        "an out-of-order press still raises",
        [("r", 100, "c1", {"battery": 90}), ("e", 50, "c1", "pressed")],
        [("raised", "pressed", "c1", 50)],
    ),
]


@pytest.mark.parametrize(("name", "script", "expected"), EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_event(name: str, script: list[Any], expected: list[Any]) -> None:
    assert Driver(EVENTS).run(script) == expected


ABSENCE = """
- {id: absent, kind: absence, severity: trouble, heartbeat_factor: 2, offline_for: 30s}
"""


def test_start_adopts_the_registry_without_firing_timers() -> None:
    devices = [ref("s1"), ref("s2")]
    started = Driver(ABSENCE, devices, heartbeat={"smoke": 300})
    started.engine.start(ms(0))
    assert started.engine.buildings() == ["b1"]  # the registry's devices exist before anything was heard
    started.engine.start(ms(500))  # a second start changes nothing: the clock is set
    ticked = Driver(ABSENCE, devices, heartbeat={"smoke": 300})
    ticked.tick(0)
    for d in (started, ticked):
        d.tick(599)
        d.tick(600)
    assert started.timeline() == ticked.timeline() == [("raised", "absent", "s1", 600), ("raised", "absent", "s2", 600)]


def test_devices_share_a_plan_unless_a_selector_looks_at_where_they_are() -> None:
    """Resolving which rules apply is cached by the parts of a device's place some selector reads: with rules that
    select by kind only, a district shares one plan per kind (start-up of 100,000 devices), while an override for
    one building still reaches exactly that building (test_overrides_per_building_and_device)."""
    district = [ref(f"d{i}", building=f"b{i % 10}", floor=i % 5) for i in range(50)]
    by_kind = Driver(SMOKE, district)
    by_kind.engine.start(ms(0))
    assert len(by_kind.engine._planner._plan_by_shape) == 1
    smoke_b3 = SMOKE.replace("clear_below: 1.5}", "clear_below: 1.5, overrides: [{building: b3, above: 6.0}]}")
    by_building = Driver(smoke_b3, district)
    by_building.engine.start(ms(0))
    assert len(by_building.engine._planner._plan_by_shape) == 10
    by_building.r(0, "d3", obscuration=4)  # in b3: the override's 6.0 applies
    by_building.r(0, "d4", obscuration=4)
    by_building.r(10, "d3", obscuration=4)
    by_building.r(10, "d4", obscuration=4)
    assert by_building.timeline() == [("raised", "smoke", "d4", 10)]


def test_absence_of_a_never_seen_registered_device() -> None:
    d = Driver(ABSENCE, [ref("s1"), ref("s2")], heartbeat={"smoke": 300}, by_device={"s2": 60})
    d.tick(0)
    d.tick(119)
    assert d.timeline() == []
    d.tick(120)  # s2: 2 x 60 s
    assert d.timeline() == [("raised", "absent", "s2", 120)]
    d.tick(1000)
    assert d.timeline()[-1] == ("raised", "absent", "s1", 600)
    d.r(1001, "s1", battery=90)
    assert d.timeline()[-1] == ("cleared", "absent", "s1", 1001)
    assert len(d.log) == 3


def test_absence_heartbeats_keep_it_quiet_and_silence_raises_once() -> None:
    d = Driver(ABSENCE, [ref("s1")], heartbeat={"smoke": 60})
    for second in range(0, 600, 50):
        d.tick(second)
        d.r(second, "s1", battery=90)
    assert d.log == []
    d.tick(10_000)
    d.tick(20_000)
    assert d.timeline() == [("raised", "absent", "s1", 550 + 120)]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ([("t", 0), ("s", 10, "s1", False), ("t", 39.9), ("t", 40)], [("raised", "absent", "s1", 40)]),
        ([("t", 0), ("s", 10, "s1", False), ("s", 30, "s1", True), ("t", 100)], []),
        (
            [("t", 0), ("s", 10, "s1", False), ("t", 50), ("t", 60), ("r", 60, "s1", {"battery": 80})],
            [("raised", "absent", "s1", 40), ("cleared", "absent", "s1", 60)],
        ),
    ],
    ids=["offline for 30 s", "back online in time", "offline then reporting"],
)
def test_absence_retained_offline(script: list[Any], expected: list[Any]) -> None:
    assert Driver(ABSENCE, [ref("s1")]).run(script) == expected


CORRELATE = """
- {id: smoke, kind: threshold, severity: fire, metric: obscuration, above: 3.0, clear_below: 1.5}
- {id: heat, kind: threshold, severity: fire, metric: celsius, above: 57}
- {id: confirmed, kind: correlate, severity: fire, rules: [smoke, heat], scope: floor, window: 120s}
"""


def _correlate_driver() -> Driver:
    devices = [ref("s1"), ref("s2"), ref("s3", floor=2), ref("h1", "heat")]
    return Driver(CORRELATE, devices)


def test_lone_detector_stays_unconfirmed() -> None:
    d = _correlate_driver()
    out = d.r(0, "s1", obscuration=5)
    assert [(t.rule, t.confirmed) for t in out] == [("smoke", False)]
    d.r(10, "s3", obscuration=5)  # another floor
    assert all(t.rule != "confirmed" for t in d.log)


def test_second_detector_confirms_the_floor() -> None:
    d = _correlate_driver()
    d.r(0, "s1", obscuration=5)
    out = d.r(60, "s2", obscuration=5)
    by_rule = {(t.rule, t.device, t.transition): t for t in out}
    scope = by_rule[("confirmed", None, "raised")]
    assert scope.confirmed is True and scope.floor == 1 and scope.key == alert_key("confirmed", "b1", 1, None)
    assert {e.device for e in scope.evidence} == {"s1", "s2"}
    assert by_rule[("smoke", "s2", "raised")].confirmed is True
    assert by_rule[("smoke", "s1", "updated")].confirmed is True
    # both clear: the confirmed fire clears with the last one
    d.r(100, "s1", obscuration=0.5)
    assert d.log[-1].rule == "smoke"
    d.r(101, "s2", obscuration=0.5)
    assert sorted((t.transition, t.rule) for t in d.log[-2:]) == [("cleared", "confirmed"), ("cleared", "smoke")]


def test_heat_confirms_smoke_but_not_outside_the_window() -> None:
    d = _correlate_driver()
    d.r(0, "s1", obscuration=5)
    d.r(121, "h1", celsius=60)
    assert all(t.rule != "confirmed" for t in d.log)
    d2 = _correlate_driver()
    d2.r(0, "s1", obscuration=5)
    d2.r(120, "h1", celsius=60)
    assert any(t.rule == "confirmed" and t.transition == "raised" for t in d2.log)


def test_transitions_come_fire_first() -> None:
    text = (
        CORRELATE
        + """
- {id: battery, kind: threshold, severity: trouble, metric: battery, below: 20, for: 10s}
- {id: gone, kind: state, severity: supervisory, metric: present, equals: false, for: 10s}
"""
    )
    d = Driver(text, [ref("s1"), ref("x1", "extinguisher")])
    d.r(0, "s1", battery=5)
    d.r(0, "x1", present=False)
    d.r(9, "s1", obscuration=2.0)
    out = d.tick(10)
    assert [t.severity for t in out] == [Severity.SUPERVISORY, Severity.TROUBLE]
    out = d.engine.process(Reading(ref("s1"), ms(11), {"battery": 5, "obscuration": 9}))
    assert [t.severity for t in out] == sorted((t.severity for t in out), reverse=True)
    assert out[0].severity == Severity.FIRE


def test_count_of_repeated_alarms() -> None:
    text = (
        SMOKE_INSTANT
        + """
- {id: repeated, kind: count, severity: trouble, rules: [smoke], count: 3, window: 1h}
"""
    )
    d = Driver(text, [ref("d1")])
    for start in (0, 100, 200):
        d.r(start, "d1", obscuration=5)
        d.r(start + 10, "d1", obscuration=0)
    raised = [x for x in d.timeline() if x[1] == "repeated"]
    assert raised == [("raised", "repeated", "d1", 200)]
    d.tick(3599)
    assert [x for x in d.timeline() if x[1] == "repeated"][-1] == ("raised", "repeated", "d1", 200)
    d.tick(3700)  # the first one (at 0 s) is an hour old at 3600 s
    assert d.timeline()[-1] == ("cleared", "repeated", "d1", 3600)


def test_flapping_is_held_active_then_released() -> None:
    text = (
        SMOKE_INSTANT
        + """
- {id: flap, kind: flapping, changes: 4, window: 10m, hold: 2m}
"""
    )
    d = Driver(text, [ref("d1")])
    for i in range(10):
        d.r(i * 10, "d1", obscuration=5)
        d.r(i * 10 + 5, "d1", obscuration=0)
    transitions = [(t.transition, t.flapping) for t in d.log]
    # raise, clear, raise, clear, raise: the sixth change (more than 4) is held instead of clearing
    assert transitions == [
        ("raised", False),
        ("cleared", False),
        ("raised", False),
        ("cleared", False),
        ("raised", False),
        ("updated", True),
    ]
    d.tick(95 + 119)
    assert len(d.log) == 6
    d.tick(95 + 120)
    assert (d.log[-1].transition, d.log[-1].flapping, d.log[-1].ts_ms) == ("cleared", True, ms(215))


def test_overrides_per_building_and_device() -> None:
    text = """
- id: smoke
  kind: threshold
  severity: fire
  metric: obscuration
  above: 3.0
  overrides:
    - {building: b2, above: 6.0}
    - {devices: [quiet], enabled: false}
"""
    d = Driver(text, [ref("a"), ref("b", building="b2"), ref("quiet")])
    d.r(0, "a", obscuration=4)
    d.r(0, "b", obscuration=4)
    d.r(0, "quiet", obscuration=50)
    d.r(1, "b", obscuration=6)
    assert d.timeline() == [("raised", "smoke", "a", 0), ("raised", "smoke", "b", 1)]


def test_match_selects_kind_floor_and_grid() -> None:
    text = """
- {id: smoke, kind: threshold, severity: fire, metric: battery, below: 10, match: {kind: smoke, floor: [2], grid: g1}}
"""
    d = Driver(text, [ref("a", floor=2), ref("b", floor=3), ref("h", "heat", floor=2)])
    for device in ("a", "b", "h"):
        d.r(0, device, battery=1)
    assert d.timeline() == [("raised", "smoke", "a", 0)]


def test_evidence_carries_the_window_bounded() -> None:
    d = Driver("""
- {id: smoke, kind: threshold, severity: fire, metric: obscuration, above: 3.0, for: 60s}
""")
    for second in range(61):
        d.r(second, "d1", obscuration=3.0 + second / 100)
    [raised] = d.log
    assert len(raised.evidence) == 20
    assert raised.evidence[0].ts_ms == ms(0) and raised.evidence[-1].ts_ms == ms(60)
    assert raised.evidence[-1].value == pytest.approx(3.6) and raised.evidence[0].metric == "obscuration"
    assert raised.value == pytest.approx(3.6)


def test_maintenance_window_gives_test_records_then_real_alarm() -> None:
    d = Driver(SMOKE, [ref("d1"), ref("d2")])
    d.engine.set_maintenance(MaintenanceWindow("w1", "b1", 1, "d1", ms(0), ms(100), "detector test"))
    d.tick(0)
    d.r(0, "d1", obscuration=5)
    d.r(0, "d2", obscuration=5)
    d.tick(10)
    by_device = {t.device: t for t in d.log}
    assert by_device["d1"].test is True and by_device["d2"].test is False
    d.r(50, "d1", obscuration=5)  # still in alarm when the window ends
    d.tick(100)
    assert [(t.transition, t.device, t.test, t.ts_ms) for t in d.log[-1:]] == [("cleared", "d1", True, ms(100))]
    d.tick(105)
    assert (d.log[-1].transition, d.log[-1].device, d.log[-1].test, d.log[-1].ts_ms) == ("raised", "d1", False, ms(105))


def test_clear_maintenance_early_and_clean_window_end() -> None:
    d = Driver(SMOKE_INSTANT, [ref("d1")])
    d.engine.set_maintenance(MaintenanceWindow("w1", "b1", None, None, ms(0), ms(1000), "building test"))
    d.tick(0)
    d.r(1, "d1", obscuration=5)
    d.r(2, "d1", obscuration=0)
    d.tick(3)
    assert [(t.transition, t.test) for t in d.log] == [("raised", True), ("cleared", True)]
    d.r(4, "d1", obscuration=5)
    out = d.engine.clear_maintenance("w1", now_ms=ms(4.5))
    assert [(t.transition, t.test, t.ts_ms) for t in out] == [("cleared", True, ms(4.5))]
    d.tick(5)  # the smoke is still there: raised for real
    assert (d.log[-1].transition, d.log[-1].test, d.log[-1].ts_ms) == ("raised", False, ms(4.5))
    assert d.engine.maintenance() == []
    assert [t.test for t in d.engine.active("b1")] == [False]


def test_drill_alerts_have_their_own_keys_and_never_touch_real_ones() -> None:
    d = Driver(SMOKE_INSTANT, [ref("d1")])
    drill = d.r(0, "d1", drill=True, obscuration=9)
    assert [(t.key, t.drill, t.test) for t in drill] == [("drill:smoke/b1/d1", True, False)]
    assert d.r(1, "d1", obscuration=0.1) == []  # a real quiet reading does not clear the drill
    real = d.r(2, "d1", obscuration=9)
    assert [(t.key, t.drill) for t in real] == [("smoke/b1/d1", False)]
    assert [(t.key, t.transition) for t in d.r(3, "d1", drill=True, obscuration=0)] == [
        ("drill:smoke/b1/d1", "cleared")
    ]


def test_snapshot_restore_mid_for() -> None:
    d = Driver(SMOKE, [ref("d1")])
    d.tick(0)
    d.r(0, "d1", obscuration=4)
    d.r(3, "d1", obscuration=4)
    data = d.engine.snapshot("b1")
    fresh = Driver(SMOKE, [ref("d1")])
    fresh.engine.restore("b1", data)
    assert fresh.tick(4.9) == []
    assert [(t.transition, t.ts_ms) for t in fresh.tick(5)] == [("raised", ms(5))]
    # and the restored raise carries the evidence gathered before the restart
    assert [e.ts_ms for e in fresh.log[0].evidence] == [ms(0), ms(3)]


def test_snapshot_restore_active_alert_is_not_raised_twice() -> None:
    d = Driver(SMOKE_INSTANT, [ref("d1")])
    d.r(0, "d1", obscuration=4)
    data = d.engine.snapshot("b1")
    assert d.engine.dirty_buildings() == {"b1"} and d.engine.dirty_buildings() == set()
    fresh = Driver(SMOKE_INSTANT, [ref("d1")])
    fresh.engine.restore("b1", data)
    assert fresh.r(1, "d1", obscuration=5) == []
    assert [t.transition for t in fresh.r(2, "d1", obscuration=0)] == ["cleared"]


def test_restore_rejects_garbage() -> None:
    from rules.engine import SnapshotError

    with pytest.raises(SnapshotError):
        Engine(RuleSet(rules=rules(SMOKE)), registry={}).restore("b1", b"{not json")
    with pytest.raises(SnapshotError):
        Engine(RuleSet(rules=rules(SMOKE)), registry={}).restore("b1", b'{"v": 99, "building": "b1"}')


def test_seed_active_prevents_a_second_raise() -> None:
    d = Driver(SMOKE_INSTANT + CORRELATE.split("\n", 2)[2], [ref("d1"), ref("d2")])
    key = alert_key("smoke", "b1", 1, "d1")
    d.engine.seed_active(
        [
            ActiveAlert(key=key, rule="smoke", building="b1", floor=1, device="d1", since_ms=ms(-60), value=4.0),
            ActiveAlert(key="confirmed/b1/F1", rule="confirmed", building="b1", floor=1, device=None, since_ms=ms(-60)),
        ]
    )
    assert d.r(0, "d1", obscuration=6) == []
    assert sorted((t.transition, t.key) for t in d.r(1, "d1", obscuration=0)) == [
        ("cleared", "confirmed/b1/F1"),
        ("cleared", key),
    ]


def test_unregistered_device_is_judged_too() -> None:
    d = Driver(SMOKE_INSTANT)
    stranger = DeviceRef(building="b9", device="zz", kind="smoke", floor=None, registered=False)
    out = d.engine.process(Reading(stranger, ms(0), {"obscuration": 7}))
    assert [(t.building, t.device, t.floor) for t in out] == [("b9", "zz", None)]
    assert d.engine.buildings() == ["b9"]


def test_presence_suspended_while_the_broker_is_unreachable() -> None:
    d = Driver(ABSENCE, [ref("s1"), ref("s2")], heartbeat={"smoke": 60})
    d.tick(0)
    d.engine.suspend_presence(ms(30))
    d.tick(1000)  # far past 2 x 60 s: but the gateway was cut off, not the devices
    assert d.log == []
    d.engine.resume_presence(ms(1000))
    d.tick(1050)
    d.r(1050, "s1", battery=90)
    d.tick(1119)
    assert d.log == []
    d.tick(1169)
    assert d.timeline() == [("raised", "absent", "s2", 1120)]
    d.tick(1170)
    assert d.timeline()[-1] == ("raised", "absent", "s1", 1170)


def test_seeded_alert_of_an_unregistered_device_is_adopted_when_it_speaks() -> None:
    d = Driver(SMOKE_INSTANT)
    stranger = DeviceRef(building="b9", device="zz", kind="smoke", floor=None, registered=False)
    key = alert_key("smoke", "b9", None, "zz")
    d.engine.seed_active([ActiveAlert(key=key, rule="smoke", building="b9", floor=None, device="zz", since_ms=ms(0))])
    assert d.engine.process(Reading(stranger, ms(10), {"obscuration": 7})) == []
    assert [t.transition for t in d.engine.process(Reading(stranger, ms(11), {"obscuration": 0}))] == ["cleared"]


def test_maintenance_windows_survive_a_restart_with_the_building() -> None:
    d = Driver(SMOKE_INSTANT, [ref("d1")])
    d.engine.set_maintenance(MaintenanceWindow("w1", "b1", None, "d1", ms(0), ms(100), "test"))
    d.r(1, "d1", obscuration=5)
    fresh = Driver(SMOKE_INSTANT, [ref("d1")])
    fresh.engine.restore("b1", d.engine.snapshot("b1"))
    assert [w.id for w in fresh.engine.maintenance()] == ["w1"]
    assert [(t.transition, t.test) for t in fresh.tick(100)] == [("cleared", True), ("raised", False)]


def test_rate_of_rise_evidence_is_the_window() -> None:
    d = Driver(ROR)
    d.run(ramp(25, 12, range(0, 61, 10)))
    [raised] = d.log
    assert [e.ts_ms for e in raised.evidence] == [ms(s) for s in range(0, 41, 10)]
    assert raised.evidence[-1].value == pytest.approx(33.0) and raised.value == pytest.approx(12.0)


def test_dirty_buildings_reports_material_changes_and_stale_presence_only() -> None:
    d = Driver(SMOKE, [ref("a"), ref("b", building="b2")])
    d.tick(0)
    assert d.engine.dirty_buildings() == {"b1", "b2"}  # registry adopted
    for b in ("b1", "b2"):
        d.engine.snapshot(b)
    d.tick(1)
    d.r(1, "a", obscuration=0.1)  # quiet, presence barely moved
    assert d.engine.dirty_buildings() == set()
    d.r(2, "a", obscuration=5)  # a pending `for`: material
    assert d.engine.dirty_buildings() == {"b1"}
    d.tick(70)
    d.r(70, "b", obscuration=0.1)  # quiet, but the saved last_seen is now 70 s stale
    assert d.engine.dirty_buildings() == {"b1", "b2"}  # b1: the `for` completed on tick


def test_seeded_count_alert_clears_one_window_after_it_was_raised() -> None:
    text = (
        SMOKE_INSTANT
        + """
- {id: repeated, kind: count, severity: trouble, rules: [smoke], count: 3, window: 1h}
"""
    )
    d = Driver(text, [ref("d1")])
    key = alert_key("repeated", "b1", 1, "d1")
    d.engine.seed_active([ActiveAlert(key=key, rule="repeated", building="b1", floor=1, device="d1", since_ms=ms(0))])
    d.tick(3599)
    assert d.log == []
    d.tick(3600)
    assert d.timeline() == [("cleared", "repeated", "d1", 3600)]
