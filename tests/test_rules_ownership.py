"""Ownership that moves at run time (cluster mode): an engine judges only the buildings it owns, and a building handed
from one engine to another through its snapshot and the store's open alerts carries on exactly as if it had never
moved.  Property tests over the same random scripts as tests/test_rules_properties.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rules.engine import Engine
from rules.types import AlertTransition, Input, MaintenanceWindow
from tests.test_rules_properties import DEVICES, FAST, RULE_SET, T0, run, scripts

Script = list[tuple[str, Input | int]]
BUILDINGS = sorted({ref.building for ref in DEVICES.values()})


def _of(transitions: list[AlertTransition], buildings: set[str]) -> list[AlertTransition]:
    return [t for t in transitions if t.building in buildings]


@FAST
@given(scripts(), st.sampled_from(BUILDINGS))
def test_an_engine_judges_only_what_it_owns(script: Script, building: str) -> None:
    whole = run(Engine(RULE_SET, registry=DEVICES), [("t", T0), *script])
    part = Engine(RULE_SET, registry=DEVICES, owned={building})
    # buildings are independent: the owned one's transitions are the whole engine's, the others' none at all
    assert run(part, [("t", T0), *script]) == _of(whole, {building})
    assert set(part.buildings()) <= {building}
    assert set(part.dirty_snapshots()) <= {building}


@FAST
@given(scripts(), st.integers(min_value=0, max_value=150), st.sets(st.sampled_from(BUILDINGS), min_size=1))
def test_a_handover_is_invisible(script: Script, cut: int, moved: set[str]) -> None:
    """Gateway A owns everything; at ``cut`` the ``moved`` buildings go to gateway B (B adopts them from A's snapshot
    and open alerts, A releases them).  From then on, B's transitions for them and A's for the rest are exactly
    what one engine that never handed anything over produces."""
    cut = min(cut, len(script))
    head: Script = [("t", T0), *script[:cut]]
    tail = script[cut:]
    never = Engine(RULE_SET, registry=DEVICES)
    run(never, head)
    expected = run(never, tail)

    a = Engine(RULE_SET, registry=DEVICES, owned=BUILDINGS)
    run(a, head)
    b = Engine(RULE_SET, registry=DEVICES, owned=())
    b.tick(a.now_ms or T0)
    for building in sorted(moved):
        b.adopt(building, snapshot=a.snapshot(building), active=a.active(building))
        a.release(building)
    assert not set(a.buildings()) & moved
    from_a, from_b = run(a, tail), run(b, tail)
    assert from_b == _of(expected, moved)
    assert from_a == _of(expected, set(BUILDINGS) - moved)


@FAST
@given(scripts(), st.integers(min_value=0, max_value=150), st.integers(min_value=0, max_value=150))
def test_released_and_taken_back_later_from_the_store(script: Script, cut: int, gap: int) -> None:
    """A building released at ``cut`` and adopted again ``gap`` steps later from its snapshot at release (a lease
    lost and regained): the inputs in between are another owner's, and the stale timers left in the heap fire
    nothing.  Afterwards the engine agrees with one that restarted from the same snapshot."""
    cut = min(cut, len(script))
    back = min(cut + gap, len(script))
    engine = Engine(RULE_SET, registry=DEVICES, owned=BUILDINGS)
    run(engine, [("t", T0), *script[:cut]])
    saved = {b: (engine.snapshot(b), engine.active(b)) for b in BUILDINGS}
    for building in BUILDINGS:
        engine.release(building)
    assert run(engine, script[cut:back]) == []  # owns nothing: judges nothing
    assert engine.dirty_snapshots() == {}
    for building in BUILDINGS:
        engine.adopt(building, snapshot=saved[building][0], active=saved[building][1])

    fresh = Engine(RULE_SET, registry=DEVICES, owned=())
    fresh.tick(engine.now_ms or T0)
    for building in BUILDINGS:
        fresh.adopt(building, snapshot=saved[building][0], active=saved[building][1])
    assert run(engine, script[back:]) == run(fresh, script[back:])


def test_adopting_without_a_snapshot_starts_absence_clocks_and_keeps_open_alerts() -> None:
    """A building whose last owner never saved a snapshot: its registered devices start their absence clocks at
    the adoption, and an alert the store holds open is not raised again."""
    a = Engine(RULE_SET, registry=DEVICES, owned=("b1",))
    a.tick(T0)
    fire = [t for t in run(a, [("i", _smoke_alarm("s1", T0 + 1_000))]) if t.transition == "raised"]
    assert fire, "the smoke alarm raised nothing"
    b = Engine(RULE_SET, registry=DEVICES, owned=())
    b.tick(T0 + 2_000)
    b.adopt("b1", snapshot=None, active=a.active("b1"))
    assert {t.key for t in b.active("b1")} >= {t.key for t in fire}
    again = run(b, [("i", _smoke_alarm("s1", T0 + 3_000))])
    assert not [t for t in again if t.transition == "raised" and t.key in {f.key for f in fire}]
    # every registered device of b1 is known (so its silence will be noticed), none of b2's
    assert "b2" not in b.buildings()
    snap = b.dirty_snapshots()
    assert set(snap) == {"b1"}


def test_a_garbled_snapshot_is_dropped_not_fatal() -> None:
    engine = Engine(RULE_SET, registry=DEVICES, owned=())
    engine.tick(T0)
    engine.adopt("b1", snapshot=b"not a snapshot", active=())
    assert engine.owns("b1") and "b1" in engine.buildings()


def test_maintenance_of_a_building_not_owned_is_left_to_its_owner() -> None:
    window = MaintenanceWindow(id="w1", building="b2", floor=None, device=None, start_ms=T0, end_ms=T0 + 3_600_000)
    engine = Engine(RULE_SET, registry=DEVICES, owned=("b1",))
    assert engine.set_maintenance(window) == []
    assert engine.maintenance() == []
    engine.adopt("b2", snapshot=None, active=())
    engine.set_maintenance(window)
    assert [w.id for w in engine.maintenance()] == ["w1"]
    engine.release("b2")
    assert engine.maintenance() == []


def test_release_needs_an_engine_built_for_ownership() -> None:
    import pytest

    with pytest.raises(ValueError, match="owned"):
        Engine(RULE_SET, registry=DEVICES).release("b1")


def _smoke_alarm(device: str, ts: int) -> Input:
    from rules.types import Reading

    return Reading(DEVICES[device], ts, {"obscuration": 40.0, "alarm": True})
