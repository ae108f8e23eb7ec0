"""The incident as the unit of work, in the store: acknowledge, dispatch (the nearest available covering station,
paging its members), on scene, resolve; the station's on-scene clock escalating at its target (injected clock);
drills never paging a real member; the timeline of every step."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from alerts.delivery import Notifier
from alerts.dispatch import DispatchPlan, Location, NoStationCovers, Station, UnknownStation, choose, distance_m
from alerts.store import AlertStore, InvalidIncidentTransition
from common.db import open_database
from common.schema import MIGRATIONS
from rules.types import Severity
from testkit.emulators.aliyun import AliyunSms
from testkit.emulators.scenario import ALIYUN, ROSTER, ROUTES, alarm, notify_config, sms_section, wait_until

T0 = 1_700_000_000_000

MEMBERS = [
    {"name": "孙队员", "phone": "+8613800000011", "role": "volunteer", "buildings": ["zz"]},
    {"name": "周队员", "phone": "+8613800000012", "role": "volunteer", "buildings": ["zz"]},
    {"name": "吴队员", "phone": "+8613800000013", "role": "volunteer", "buildings": ["zz"]},
    {"name": "郑站长", "phone": "+8613800000014", "role": "volunteer", "buildings": ["zz"]},
]
# yg01 at the origin; the east station 400 m away, the west one 1.2 km away, both covering grid g01.
YG01 = Location(lat=31.2000, lon=121.4000)
EAST = Station(
    id="st-east",
    name="东门微型消防站",
    location=Location(lat=31.2036, lon=121.4000),
    grids=("g01",),
    members=("孙队员", "周队员"),
    leader="郑站长",
    on_scene_target_s=180,
)
WEST = Station(
    id="st-west",
    name="西门微型消防站",
    location=Location(lat=31.2108, lon=121.4000),
    grids=("g01",),
    members=("吴队员",),
    on_scene_target_s=240,
)
PLAN = DispatchPlan(stations=(EAST, WEST), locations={"yg01": YG01, "yg02": YG01}, travel_speed_kmh=15)


def make_store(target: str | Path, **extra: object) -> AlertStore:
    config = notify_config(
        webhook_url="http://127.0.0.1:9/hook",
        sms=sms_section("aliyun", "http://127.0.0.1:9"),
        governance_url="http://127.0.0.1:9/gov",
        roster=ROSTER + MEMBERS,
        **extra,  # type: ignore[arg-type]
    )
    return AlertStore(target, notify=config, building_names={"yg01": "阳光花园 1号楼"}, plan=PLAN)


def fire(store: AlertStore, building: str = "yg01", *, at: int = T0, drill: bool = False) -> int:
    """Three detectors of one floor: one incident."""
    changes = store.apply(
        [alarm(f"{building}-sd-0{i}", building=building, floor=3, drill=drill) for i in range(3)], now_ms=at
    )
    [incident] = {c.incident_id for c in changes}
    assert incident is not None
    return incident


def test_the_pure_choice_prefers_the_nearest_available_station() -> None:
    assert 390 < distance_m(YG01, EAST.location) < 410  # type: ignore[arg-type]
    everyone = {"孙队员", "周队员", "吴队员"}
    decision = choose(PLAN, building="yg01", grid="g01", on_duty=everyone.__contains__, roster=everyone, committed={})
    assert decision.station == "st-east" and decision.members == ("孙队员", "周队员")
    assert decision.distance_m is not None and decision.eta_s == round(decision.distance_m / (15 / 3.6))
    assert "nearest available" in decision.reason
    busy = choose(
        PLAN, building="yg01", grid="g01", on_duty=everyone.__contains__, roster=everyone, committed={"st-east": 7}
    )
    assert busy.station == "st-west" and "st-east is committed to incident 7" in busy.reason
    nobody = choose(PLAN, building="yg01", grid="g01", on_duty=lambda _: False, roster=everyone, committed={})
    assert nobody.station == "st-east" and nobody.members == ("孙队员", "周队员")  # a fire must reach someone
    assert "no covering station is available" in nobody.reason
    with pytest.raises(NoStationCovers):
        choose(PLAN, building="hp02", grid="g02", on_duty=everyone.__contains__, roster=everyone, committed={})
    with pytest.raises(UnknownStation):
        choose(PLAN, building="yg01", grid="g01", on_duty=bool, roster=everyone, committed={}, station="st-x")


def test_the_closed_loop_acts_on_every_alert_and_keeps_a_timeline(store_target: str | Path) -> None:
    store = make_store(store_target)
    incident = fire(store)
    seen: list[str] = []
    store.add_listener(lambda change: seen.append(change.type))

    acked = store.acknowledge_incident(incident, by="值班员", actor="duty-token", by_name="值班员", now_ms=T0 + 5_000)
    assert [c.type for c in acked].count("alert.acknowledged") == 3
    assert {a.state for a in store.list_alerts()} == {"acknowledged"}
    with pytest.raises(InvalidIncidentTransition):  # nothing left to acknowledge
        store.acknowledge_incident(incident, by="x", now_ms=T0 + 6_000)

    _, decision = store.dispatch_incident(incident, actor="duty-token", by_name="值班员", now_ms=T0 + 10_000)
    assert decision.station == "st-east"
    pages = [r for r in store.outbox(channel="sms") if r.dedup and r.dedup.startswith("dispatch:")]
    assert sorted(r.recipient or "" for r in pages) == ["周队员", "孙队员"]
    assert store.committed_stations() == {"st-east": incident}
    assert {a.state for a in store.list_alerts()} == {"dispatched"}

    store.arrive_incident(incident, actor="sms:+86138****0011", by_name="孙队员", via="sms", now_ms=T0 + 100_000)
    assert store.escalate_due(now_ms=T0 + 400_000) == []  # on scene in time: no breach
    store.resolve_incident(
        incident, actor="duty-token", by_name="值班员", cause="real_fire", note="扑灭", now_ms=T0 + 900_000
    )
    assert {(a.state, a.cause) for a in store.list_alerts()} == {("resolved", "real_fire")}
    assert store.committed_stations() == {}
    with pytest.raises(InvalidIncidentTransition):
        store.arrive_incident(incident, actor="x", now_ms=T0 + 901_000)

    detail = store.get_incident(incident)
    assert detail is not None
    record = detail.incident
    assert record.state == "resolved" and record.station == "st-east" and record.cause == "real_fire"
    assert record.floors == (3,) and record.device_count == 3 and len(detail.alerts) == 3
    steps = [(e.action, e.by) for e in detail.timeline if e.action != "paged"]
    assert steps == [
        ("opened", "system"),
        ("acknowledged", "值班员"),
        ("dispatched", "值班员"),
        ("on_scene", "孙队员"),
        ("resolved", "值班员"),
    ]
    assert detail.first("on_scene") == T0 + 100_000
    on_scene = next(e for e in detail.timeline if e.action == "on_scene")
    assert on_scene.actor == "sms:+86138****0011" and on_scene.detail == {
        "via": "sms",
        "elapsed_s": 90,
        "target_s": 180,
    }
    paged = {str((e.detail or {})["recipient"]) for e in detail.timeline if e.action == "paged"}
    assert {"孙队员", "周队员"} <= paged
    incident_events = [t for t in seen if t.startswith("incident.")]
    assert incident_events == ["incident.acknowledged", "incident.dispatched", "incident.on_scene", "incident.resolved"]


def test_a_station_late_on_scene_escalates_at_its_target(store_target: str | Path) -> None:
    store = make_store(store_target)
    incident = fire(store)
    store.dispatch_incident(incident, actor="duty-token", now_ms=T0 + 10_000)
    deadline = T0 + 10_000 + 180_000
    # Dispatching acknowledged every alert: the station's clock is all that is left to run out.
    assert store.next_escalation_ms() == deadline
    assert [c for c in store.escalate_due(now_ms=deadline - 1) if c.incident_id == incident] == []
    changes = store.escalate_due(now_ms=deadline)
    assert [c.type for c in changes] == ["incident.escalated"]
    assert changes[0].data["escalated_to"] == ["郑站长", "赵值班"]  # the leader, then the duty officer
    late = [r.recipient for r in store.outbox(channel="sms") if r.dedup and r.dedup.startswith("late:")]
    assert sorted(late) == sorted(["郑站长", "赵值班"])
    assert store.escalate_due(now_ms=deadline + 60_000) == []  # one breach, escalated once
    detail = store.get_incident(incident)
    assert detail is not None
    breach = next(e for e in detail.timeline if e.action == "on_scene_breach")
    assert breach.actor == "system" and breach.detail == {"target_s": 180, "elapsed_s": 180, "station": "st-east"}
    assert [e.action for e in detail.timeline if e.action in ("escalated", "on_scene_breach")] == [
        "on_scene_breach",
        "escalated",
    ]


def test_a_second_fire_gets_the_next_station_and_a_drill_pages_no_real_member(store_target: str | Path) -> None:
    store = make_store(store_target, drill_receivers={"members": [{"name": "演练员", "phone": "+8613900000009"}]})
    first = fire(store)
    store.dispatch_incident(first, actor="t", now_ms=T0 + 1_000)
    second = fire(store, "yg02", at=T0 + 2_000)
    _, decision = store.dispatch_incident(second, actor="t", now_ms=T0 + 3_000)
    assert decision.station == "st-west" and f"committed to incident {first}" in decision.reason

    drill = fire(store, "yg03", at=T0 + 4_000, drill=True)
    before = {r.id for r in store.outbox(channel="sms")}
    store.dispatch_incident(drill, actor="t", station="st-east", now_ms=T0 + 5_000)
    new = [r for r in store.outbox(channel="sms") if r.id not in before]
    assert [r.phone for r in new] == ["+8613900000009"]
    assert store.escalate_due(now_ms=T0 + 10_000_000) != []  # the real ones breach...
    late_phones = {r.phone for r in store.outbox(channel="sms") if r.dedup and r.dedup.startswith(f"late:{drill}:")}
    assert late_phones == {"+8613900000009"}  # ...the drill never wakes the leader, only its own receivers


def test_supervisory_escalates_only_on_a_route_that_says_so(store_target: str | Path) -> None:
    routes = [
        *ROUTES,
        {
            "name": "upkeep",
            "min_severity": "supervisory",
            "ack_timeout_s": 900,
            "tiers": [{"roles": ["grid_worker"]}, {"roles": ["duty_officer"]}],
        },
    ]
    store = make_store(store_target, routes=routes)
    store.apply([alarm("yg01-ex-1", severity=Severity.SUPERVISORY)], now_ms=T0)
    assert store.next_escalation_ms() == T0 + 900_000
    changes = store.escalate_due(now_ms=T0 + 900_000)
    assert [c.type for c in changes] == ["alert.escalated"]
    store.apply([alarm("yg01-tr-1", severity=Severity.TROUBLE, rule="trouble")], now_ms=T0)
    assert all(a.tier == 0 for a in store.list_alerts() if a.severity == Severity.TROUBLE)


@pytest.fixture
async def aliyun() -> AsyncIterator[AliyunSms]:
    emulator = AliyunSms(
        access_key_id=ALIYUN["access_key_id"],
        access_key_secret=ALIYUN["access_key_secret"],
        sign_name=ALIYUN["sign_name"],
        templates={"SMS_100001", "SMS_100002"},
    )
    async with emulator:
        yield emulator  # type: ignore[misc]


@pytest.mark.timeout(60)
async def test_the_notifier_pages_the_leader_when_the_station_is_late(
    store_target: str | Path, aliyun: AliyunSms
) -> None:
    """The real notifier on an injected clock: the dispatch pages reach the SMS emulator at once; nothing more
    until the target; at the target the leader and the duty officer are paged, once."""
    now = [1_800_000_000_000]
    notify = notify_config(sms=sms_section("aliyun", aliyun.url), roster=ROSTER + MEMBERS, ack_timeout_s=60)
    store = AlertStore(store_target, notify=notify, plan=PLAN)
    notifier = Notifier(store, clock=lambda: now[0])
    task = asyncio.create_task(notifier.run())
    try:
        incident = fire(store, at=now[0])
        store.dispatch_incident(incident, actor="t", now_ms=now[0])
        notifier.wake()
        members = {"13800000011", "13800000012"}
        await aliyun.wait_for(lambda: members <= {m["phone"] for m in aliyun.messages})
        now[0] += 179_000
        notifier.wake()
        await wait_until(lambda: notifier.idle)
        late = {"13800000014", "13800000004"}  # the station's leader, the duty officer
        assert not late & {m["phone"] for m in aliyun.messages}
        now[0] += 1_000
        notifier.wake()
        await aliyun.wait_for(lambda: late <= {m["phone"] for m in aliyun.messages})
        now[0] += 600_000
        notifier.wake()
        await wait_until(lambda: notifier.idle)
        phones = [m["phone"] for m in aliyun.messages]
        assert all(phones.count(p) == 1 for p in late | members)
        assert aliyun.errors == []
    finally:
        notifier.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        store.close()


def test_the_incident_loop_migration_keeps_what_the_store_had(tmp_path: Path) -> None:
    """A store written before the loop: its closed incidents read as resolved, its open ones as open."""
    path = tmp_path / "old.sqlite"
    loop = next(m.version for m in MIGRATIONS if m.name == "incident loop")
    before = tuple(m for m in MIGRATIONS if m.version < loop)
    with closing(open_database(path, migrations=before)) as db:
        for building, closed in (("yg01", 5), ("yg02", None)):
            db.execute(
                "INSERT INTO incidents (building, grid, code, severity, opened_ms, last_alert_ms, updated_ms,"
                " closed_ms, alert_count, open_count) VALUES (?, 'g01', '1234', 3, 1, 1, 1, ?, 1, ?)",
                (building, closed, 0 if closed else 1),
            )
        db.commit()
    store = AlertStore(path, notify=notify_config(), plan=PLAN)
    try:
        states = {i.building: i.state for i in store.list_incidents()}
        assert states == {"yg01": "resolved", "yg02": "open"}
        detail = store.get_incident(2)
        assert detail is not None and detail.timeline == () and detail.incident.station is None
    finally:
        store.close()
