"""The fast lane's watermark, property-tested on the pure engine with the shipped rules.

A detector's ``alarm`` event travels on its own MQTT session and overtakes the telemetry the device sent before it.
Whatever that overtaken telemetry says (no alarm, no smoke, any age: seconds or far beyond ``REORDER_MS``), and
whenever it is judged (ticks in between, a restart from the snapshot in between), it must never clear the alarm the
event raised nor raise it a second time.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.ingest.contract import Decoder, Reason, Rejected
from rules.engine import REORDER_MS, Engine
from rules.loader import DEFAULTS_PATH, read_rules_file
from rules.ruleset import RuleSet
from rules.state import alert_key
from rules.types import AlertTransition, DeviceEvent, DeviceRef, Reading
from simulators.model import from_config
from simulators.scenarios import parse_spec
from simulators.sim import Simulation

T0 = 1_800_000_000_000
SMOKE = DeviceRef("b1", "s1", "smoke", 1, "g1")
OTHER = DeviceRef("b1", "s2", "smoke", 1, "g1")
HEAT = DeviceRef("b1", "h1", "heat", 1, "g1")
REGISTRY = {SMOKE.device: SMOKE, OTHER.device: OTHER, HEAT.device: HEAT}
RULES = RuleSet(rules=tuple(read_rules_file(DEFAULTS_PATH)), heartbeat_s_by_kind={"smoke": 30, "heat": 60})
KEY = alert_key("smoke-detector-alarm", "b1", 1, "s1")

QUIET = st.fixed_dictionaries(
    {"obscuration": st.sampled_from([0.0, 0.5, 1.0, 1.4, 3.5, 8.0])},
    optional={"alarm": st.booleans(), "battery": st.sampled_from([10.0, 90.0])},
)
# how far before the alarm event a late reading was stamped: within the reordering window and far beyond it
AGE = st.one_of(st.integers(0, 5_000), st.integers(0, 3 * REORDER_MS), st.integers(REORDER_MS, 24 * 3_600_000))


def _engine() -> Engine:
    engine = Engine(RULES, registry=REGISTRY)
    engine.start(T0)
    return engine


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(QUIET, max_size=6),
    late=st.lists(st.tuples(AGE, QUIET, st.booleans()), min_size=1, max_size=30),
    restart_at=st.one_of(st.none(), st.integers(0, 30)),
    gap=st.integers(1, 10_000),
)
def test_late_older_readings_never_clear_or_reraise_a_fast_lane_alarm(
    history: list[dict[str, float | bool]],
    late: list[tuple[int, dict[str, float | bool], bool]],
    restart_at: int | None,
    gap: int,
) -> None:
    engine = _engine()
    ts = T0
    for values in history:  # what the lane had already judged: readings older than the event, in order
        ts += 1_000
        engine.process(Reading(SMOKE, ts, values))
        engine.tick(ts)
    alarm_ts = ts + gap
    raised = engine.process(DeviceEvent(SMOKE, alarm_ts, "alarm"))
    before = {t.key for t in engine.active()}
    assert KEY in before, "the alarm event raises the detector's alarm"
    assert [t.transition for t in raised if t.key == KEY] in (["raised"], [])  # [] when the history raised it
    now = alarm_ts
    seen: list[AlertTransition] = []
    for index, (age, values, tick) in enumerate(late):
        if restart_at == index:
            restored = Engine(RULES, registry=REGISTRY)
            restored.tick(engine.now_ms or T0)
            restored.restore("b1", engine.snapshot("b1"))
            engine = restored
        seen.extend(engine.process(Reading(SMOKE, alarm_ts - age, values)))
        if tick:
            now += 1_000  # engine time goes on while the backlog drains, not past the absence timers
            seen.extend(engine.tick(now))
    assert [t for t in seen if t.key == KEY] == [], "a late reading cleared or re-raised the alarm"
    assert KEY in {t.key for t in engine.active()}


def test_a_reading_after_the_alarm_is_judged_again() -> None:
    """The watermark holds back only what the alarm overtook: newer telemetry clears the alarm as it always did."""
    engine = _engine()
    assert [t.transition for t in engine.process(DeviceEvent(SMOKE, T0 + 1_000, "alarm")) if t.key == KEY] == ["raised"]
    assert engine.process(Reading(SMOKE, T0 + 500, {"alarm": False})) == []
    out = []
    for step in range(2, 40):
        out += engine.process(Reading(SMOKE, T0 + step * 1_000, {"alarm": False, "obscuration": 0.0}))
    assert [t.transition for t in out if t.key == KEY] == ["cleared"]


def test_alarm_telemetry_without_an_event_still_raises() -> None:
    engine = _engine()
    out = engine.process(Reading(SMOKE, T0 + 1_000, {"alarm": True}))
    assert [t.transition for t in out if t.key == KEY] == ["raised"]


def test_the_same_alarm_event_twice_raises_once() -> None:
    """The event redelivered after a reconnect (at least once) is no second alarm."""
    engine = _engine()
    first = engine.process(DeviceEvent(SMOKE, T0 + 1_000, "alarm"))
    again = engine.process(DeviceEvent(SMOKE, T0 + 1_000, "alarm"))
    assert [t.transition for t in first if t.key == KEY] == ["raised"]
    assert [t for t in again if t.key == KEY] == []


def test_the_simulator_sends_the_alarm_event_as_a_detector_enters_alarm() -> None:
    """Each smoke detector of a simulated fire publishes one ``alarm`` event, right after the first sample in alarm
    and stamped like it; its telemetry still says ``alarm: true`` (the ordinary lane)."""
    root = Path(__file__).resolve().parent.parent
    community = from_config(load_config(root / "examples" / "community.yaml"))
    start = 1_780_000_000_000
    sim = Simulation(community, seed=1, start_ms=start, scenarios=[parse_spec("fire@yg01:1F+10s/3m", community)])
    messages = sim.advance(start + 600_000) + sim.stop(start + 600_000)
    entered: dict[str, int] = {}
    events: dict[str, list[int]] = {}
    for m in messages:
        _building, device, channel = m.topic.split("/")[1:]
        doc = orjson.loads(m.payload) if channel != "status" else None
        if channel == "telemetry" and isinstance(doc, dict) and doc.get("alarm") is True:
            entered.setdefault(device, doc["ts"])
        if channel == "event" and isinstance(doc, dict) and doc["type"] == "alarm":
            events.setdefault(device, []).append(doc["ts"])
    assert entered, "the fire put no detector in alarm"
    assert {d: ts[0] for d, ts in events.items()} == entered


def test_an_alarm_event_is_decoded_and_one_without_ts_is_rejected() -> None:
    decoder = Decoder(prefix="firegrid", registry=REGISTRY)
    decoded = decoder.decode("firegrid/b1/s1/event", b'{"ts": 1800000000000, "type": "alarm"}', received_ms=T0)
    assert decoded.inputs == (DeviceEvent(SMOKE, T0, "alarm"),)
    try:
        decoder.decode("firegrid/b1/s1/event", b'{"type": "alarm"}', received_ms=T0)
    except Rejected as exc:
        assert exc.reason is Reason.WRONG_SHAPE and "ts" in str(exc)
    else:
        raise AssertionError("an alarm event without ts was accepted")
    # the other events keep their old rule: no ts means the time of receipt
    pressed = decoder.decode("firegrid/b1/s1/event", b'{"type": "pressed"}', received_ms=T0)
    assert pressed.inputs[0].ts_ms == T0


def test_a_heat_detectors_alarm_event_holds_back_none_of_its_telemetry() -> None:
    """No shipped rule judges a heat detector's ``alarm`` event, so its overtaken sample over the fixed threshold must
    still raise the alarm when it arrives (holding it back would make the fire late)."""
    engine = _engine()
    assert engine.process(DeviceEvent(HEAT, T0 + 2_000, "alarm")) == []
    out = engine.process(Reading(HEAT, T0 + 2_000, {"celsius": 70.0}))
    assert [t.transition for t in out if t.key == alert_key("heat-fixed", "b1", 1, "h1")] == ["raised"]
