"""What the API serves, on real parts: alerts (filters, paging, detail with evidence), incidents, building rollups,
devices (presence, last values, history from the local store and from a real InfluxDB), maintenance windows.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api import create_api_app
from gateway.config import Device
from gateway.ingest.contract import registry_from_config
from gateway.storage.presence import DeviceState
from rules.types import DeviceKind, Reading, StatusChange
from testkit.api import build_runtime, config_for_tests, inject, now_ms, tick

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
VIEWER = {"Authorization": "Bearer demo-viewer-token"}
OPERATOR = {"Authorization": "Bearer demo-operator-token"}


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c


async def get(client: TestClient, path: str, headers: dict[str, str] = VIEWER) -> Any:
    response = await client.get(path, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


def alert_ids(changes: list[Any]) -> list[int]:
    return [int(c.alert_id) for c in changes if c.type == "alert.raised"]


async def test_alert_list_filters_and_paging(client: TestClient, runtime: Any) -> None:
    t0 = now_ms()
    fires = [
        alert_ids(inject(runtime, d, {"alarm": True}, ts_ms=t0 + i))[0]
        for i, d in enumerate(["yg01-sd-01a", "yg02-sd-01a", "hp02-sd-01a"])
    ]
    # an extinguisher off its bracket: supervisory, not fire
    inject(runtime, "yg01-ex-01", {"present": False}, ts_ms=t0 + 10)
    supervisory = alert_ids(tick(runtime, t0 + 40_000))  # the rule says: missing for 30 s
    assert supervisory, "the default rules should raise a supervisory alert for a missing extinguisher"

    page = await get(client, "/api/v1/alerts")
    assert [a["id"] for a in page["items"]] == [supervisory[0], *reversed(fires)]  # newest first
    assert page["next_offset"] is None
    first = await get(client, "/api/v1/alerts?limit=2")
    assert len(first["items"]) == 2 and first["next_offset"] == 2
    second = await get(client, "/api/v1/alerts?limit=2&offset=2")
    assert [a["id"] for a in first["items"] + second["items"]] == [a["id"] for a in page["items"]]
    assert second["next_offset"] is None

    fire_only = await get(client, "/api/v1/alerts?severity=fire")
    assert sorted(a["id"] for a in fire_only["items"]) == sorted(fires)
    assert {a["building"] for a in (await get(client, "/api/v1/alerts?grid=g02"))["items"]} == {"hp02"}
    assert [a["id"] for a in (await get(client, "/api/v1/alerts?building=yg02"))["items"]] == [fires[1]]

    assert (await client.post(f"/api/v1/alerts/{fires[0]}/ack", headers=OPERATOR, json={})).status == 200
    response = await client.post(
        f"/api/v1/alerts/{fires[1]}/resolve", headers=OPERATOR, json={"cause": "false_alarm", "note": "烧水"}
    )
    assert response.status == 200
    assert [a["id"] for a in (await get(client, "/api/v1/alerts?state=acknowledged"))["items"]] == [fires[0]]
    active = {a["id"] for a in (await get(client, "/api/v1/alerts?active=true"))["items"]}
    assert active == {fires[0], fires[2], supervisory[0]}
    assert [a["id"] for a in (await get(client, "/api/v1/alerts?active=false"))["items"]] == [fires[1]]
    assert (await get(client, "/api/v1/alerts?active=true&state=resolved"))["items"] == []
    future = "2999-01-01T00:00:00Z"
    assert (await get(client, f"/api/v1/alerts?since={future}"))["items"] == []
    assert len((await get(client, f"/api/v1/alerts?since={t0 - 60_000}"))["items"]) == 4
    assert (await get(client, f"/api/v1/alerts?since={t0 + 50_000}"))["items"] == []


async def test_alert_detail_has_audit_and_evidence(client: TestClient, runtime: Any) -> None:
    alert_id = alert_ids(inject(runtime, "yg01-sd-02a", {"alarm": True, "obscuration": 7.5}))[0]
    response = await client.post(
        f"/api/v1/alerts/{alert_id}/dispatch", headers=OPERATOR, json={"to": "微型消防站一队", "by": "李四"}
    )
    assert response.status == 200, await response.text()
    detail = await get(client, f"/api/v1/alerts/{alert_id}")
    assert detail["state"] == "dispatched" and detail["dispatched_to"] == "微型消防站一队"
    assert detail["severity"] == "fire" and detail["building"] == "yg01" and detail["floor"] == 2
    assert detail["grid"] == "g01" and detail["building_name"] == "阳光花园 1号楼"
    assert [a["action"] for a in detail["audit"]] == ["raised", "dispatched"]
    assert detail["audit"][1]["detail"]["to"] == "微型消防站一队"
    assert detail["evidence"], "the readings that raised the alert"
    assert all(e["device"] == "yg01-sd-02a" for e in detail["evidence"])
    assert {e["metric"] for e in detail["evidence"]} & {"alarm", "obscuration"}
    resolved = await client.post(f"/api/v1/alerts/{alert_id}/resolve", headers=OPERATOR, json={"cause": "real_fire"})
    body = await resolved.json()
    assert body["state"] == "resolved" and body["cause"] == "real_fire" and body["resolved_by"] == "micro-station"

    incidents = await get(client, "/api/v1/incidents")
    assert incidents["items"][0]["building"] == "yg01" and alert_id in incidents["items"][0]["alert_ids"]
    assert (await get(client, "/api/v1/incidents?active=true"))["items"] == []


async def test_buildings_rollup_and_devices(client: TestClient, runtime: Any) -> None:
    registry = registry_from_config(runtime.config)
    t = now_ms()
    for device in [d.id for d in runtime.config.devices if d.building == "yg02"]:
        runtime.presence.reading(Reading(ref=registry[device], ts_ms=t, values={"battery": 90.0}))
    runtime.presence.reading(Reading(ref=registry["yg02-sd-01b"], ts_ms=t, values={"battery": 7.0}))
    runtime.presence.status(StatusChange(ref=registry["yg02-sd-02a"], ts_ms=t + 1, online=False))
    inject(runtime, "yg02-ex-01", {"present": True, "pressure_mpa": 0.3})
    inject(runtime, "yg02-sd-01a", {"alarm": True})

    b = next(x for x in (await get(client, "/api/v1/buildings"))["items"] if x["id"] == "yg02")
    status = b["status"]
    total = sum(1 for d in runtime.config.devices if d.building == "yg02")
    assert status["worst_severity"] == "fire"
    assert status["devices_total"] == total
    assert status["devices_offline"] == 1 and status["devices_online"] == total - 1
    assert status["low_battery"] == 1 and status["extinguishers_out_of_service"] == 1
    calm = next(x for x in (await get(client, "/api/v1/buildings"))["items"] if x["id"] == "hp03")
    assert (
        calm["status"]["worst_severity"] is None
        and calm["status"]["devices_unknown"] == calm["status"]["devices_total"]
    )

    detail = await get(client, "/api/v1/buildings/yg02")
    assert [d["id"] for d in detail["offline_devices"]] == ["yg02-sd-02a"]
    assert [d["id"] for d in detail["low_battery_devices"]] == ["yg02-sd-01b"]
    assert [d["id"] for d in detail["extinguishers_out_of_service"]] == ["yg02-ex-01"]
    assert detail["active_alerts"][0]["severity"] == "fire"

    offline = await get(client, "/api/v1/devices?status=offline")
    assert [d["id"] for d in offline["items"]] == ["yg02-sd-02a"] and offline["total"] == 1
    smoke = await get(client, "/api/v1/devices?building=yg02&kind=smoke")
    assert smoke["items"] and all(d["kind"] == "smoke" for d in smoke["items"])
    assert [d["id"] for d in (await get(client, "/api/v1/devices?out_of_service=true"))["items"]] == ["yg02-ex-01"]
    # a device missing from the registry (allow_unregistered) is listed as unregistered
    from rules.types import DeviceRef

    stranger = DeviceRef(building="yg02", device="zz-new-1", kind="heat", registered=False)
    runtime.presence.reading(Reading(ref=stranger, ts_ms=t, values={"celsius": 21.0}))
    unregistered = await get(client, "/api/v1/devices?unregistered=true")
    assert [d["id"] for d in unregistered["items"]] == ["zz-new-1"]
    assert unregistered["items"][0]["registered"] is False


async def test_device_history_from_the_local_store(client: TestClient, runtime: Any) -> None:
    registry = registry_from_config(runtime.config)
    t = now_ms() - 50_000
    device = "yg01-ht-01"
    for i in range(5):
        runtime.presence.reading(Reading(ref=registry[device], ts_ms=t + i * 10_000, values={"battery": 80.0 + i}))
    runtime.presence.flush()
    detail = await get(client, f"/api/v1/devices/{device}?minutes=5")
    assert detail["history_source"] == "local"
    assert [p["values"]["battery"] for p in detail["history"]] == [80.0, 81.0, 82.0, 83.0, 84.0]
    assert detail["values"]["battery"] == 84.0 and detail["status"] == "online"
    assert (await client.get("/api/v1/devices/nosuch", headers=VIEWER)).status == 404


async def test_device_history_from_influxdb(tmp_path: Path, influx: Any) -> None:
    from gateway.storage.influx import InfluxClient

    config = config_for_tests(EXAMPLE, tmp_path, influx={"url": influx.url})
    client_influx = InfluxClient(config.influx)
    rt = build_runtime(config, influx=client_influx)
    t = now_ms() - 30_000
    lines = "\n".join(
        f"heat,building=yg01,device=yg01-ht-x,floor=3,grid=g01 celsius={20 + i * 5}.0 {t + i * 1000}" for i in range(4)
    )
    lines += f"\nheat,building=yg01,device=other,floor=3,grid=g01 celsius=99.0 {t}"
    request = urllib.request.Request(f"{influx.url}/write?db=firegrid&precision=ms", data=lines.encode(), method="POST")

    def write() -> int:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)

    assert await asyncio.to_thread(write) == 204
    from rules.types import DeviceRef

    ref = DeviceRef(building="yg01", device="yg01-ht-x", kind="heat", floor=3, grid="g01", registered=False)
    rt.presence.reading(Reading(ref=ref, ts_ms=t + 3000, values={"celsius": 35.0}))
    try:
        async with TestClient(TestServer(create_api_app(rt))) as c:
            detail = await get(c, "/api/v1/devices/yg01-ht-x?minutes=10")
            assert detail["history_source"] == "influxdb" and detail["history_error"] is None
            assert [p["values"]["celsius"] for p in detail["history"]] == [20.0, 25.0, 30.0, 35.0]
            assert [p["ts_ms"] for p in detail["history"]] == [t + i * 1000 for i in range(4)]
            influx.stop()
            down = await get(c, "/api/v1/devices/yg01-ht-x")
            assert down["history"] == [] and "InfluxDB" in down["history_error"]  # degraded, not a 500
    finally:
        await client_influx.close()
        rt.store.close()


async def test_maintenance_windows(client: TestClient, runtime: Any) -> None:
    body = {"building": "yg03", "floor": 2, "duration_s": 600, "reason": "firegrid verify"}
    assert (await client.post("/api/v1/maintenance", headers=VIEWER, json=body)).status == 403
    response = await client.post("/api/v1/maintenance", headers=OPERATOR, json=body)
    assert response.status == 201, await response.text()
    window = await response.json()
    assert window["building"] == "yg03" and window["end_ms"] - window["start_ms"] == 600_000
    assert window["created_by"] == "micro-station"
    assert [w.id for w in runtime.engine.maintenance()] == [window["id"]]
    listed = await get(client, "/api/v1/maintenance")
    assert [w["id"] for w in listed["items"]] == [window["id"]]
    # g01's token sees it (yg03 is in g01); an alarm inside the window is recorded as a test, not paged
    device = next(d.id for d in runtime.config.devices if d.building == "yg03" and d.floor == 2 and d.kind == "smoke")
    changes = inject(runtime, device, {"alarm": True})
    alert = next(c for c in changes if c.type == "alert.raised")
    assert (await get(client, f"/api/v1/alerts/{alert.alert_id}"))["test"] is True
    deleted = await client.delete(f"/api/v1/maintenance/{window['id']}", headers=OPERATOR)
    assert deleted.status == 200 and (await deleted.json())["deleted"] is True
    assert runtime.engine.maintenance() == []
    assert (await get(client, "/api/v1/maintenance"))["items"] == []
    assert (await client.delete(f"/api/v1/maintenance/{window['id']}", headers=OPERATOR)).status == 404
    bad = await client.post("/api/v1/maintenance", headers=OPERATOR, json={"building": "yg03", "reason": "x"})
    assert bad.status == 422


# --- many buildings: per-building views read a building index, rollups a cheaper path ---------------------------

KINDS = ("smoke", "heat", "extinguisher", "call_point")
G01 = {"Authorization": "Bearer interleaved-g01-token"}


def interleaved_config(tmp_path: Path) -> Any:
    """Six buildings whose devices are registered in turn (b5-d0, b4-d0, ..., b0-d0, b5-d1, ...), floors mixed."""
    buildings = [
        {"id": f"ib{i}", "name": f"Block {i}", "grid": "g01" if i % 2 else "g02", "floors": 10} for i in range(6)
    ]
    devices = [
        {"id": f"ib{i}-d{n}", "building": f"ib{i}", "kind": KINDS[(n + i) % 4], "floor": (n * 7 + i) % 10}
        for n in range(8)
        for i in reversed(range(6))
    ]
    tokens = [
        {"name": "viewer", "token": "demo-viewer-token", "role": "viewer"},
        {"name": "g01", "token": "interleaved-g01-token", "role": "viewer", "grids": ["g01"]},
    ]
    return config_for_tests(EXAMPLE, tmp_path, buildings=buildings, devices=devices, http={"tokens": tokens})


def every_device(runtime: Any) -> list[Any]:
    """The oracle: each device built on its own from presence's whole list, as the API did before it kept an index
    (every device, filtered)."""
    from gateway.api import views

    grids = {b.id: b.grid for b in runtime.config.buildings}
    reader = views.DeviceReader(now_ms=now_ms(), building_grids=grids, registry=runtime.config.device)
    out = []
    for listed in runtime.presence.list_devices(now_ms=reader.now_ms):
        record = runtime.presence.devices[listed["id"]]
        facts = reader.facts(listed["id"], record)
        assert facts is not None
        out.append(reader.row(listed["id"], record, facts).model())
    return out


async def test_building_views_when_buildings_interleave(tmp_path: Path) -> None:
    runtime = build_runtime(interleaved_config(tmp_path))
    registry = registry_from_config(runtime.config)
    t = now_ms()
    runtime.presence.reading(Reading(ref=registry["ib3-d1"], ts_ms=t, values={"battery": 9.0}))
    runtime.presence.reading(Reading(ref=registry["ib3-d2"], ts_ms=t, values={"battery": 95.0}))
    runtime.presence.status(StatusChange(ref=registry["ib4-d5"], ts_ms=t, online=False))
    extinguisher = next(d.id for d in runtime.config.devices if d.building == "ib1" and d.kind == "extinguisher")
    inject(runtime, extinguisher, {"present": False}, ts_ms=t)
    assert alert_ids(tick(runtime, t + 40_000)), "a missing extinguisher raises a supervisory alert"
    # Back on its bracket: the reading looks fine, the open supervisory alert still keeps it out of service.
    runtime.presence.reading(Reading(ref=registry[extinguisher], ts_ms=t + 41_000, values={"present": True}))
    try:
        async with TestClient(TestServer(create_api_app(runtime))) as c:
            rollups = {b["id"]: b["status"] for b in (await get(c, "/api/v1/buildings"))["items"]}
            assert list(rollups) == [f"ib{i}" for i in range(6)]
            devices = every_device(runtime)
            for building in rollups:
                mine = [d for d in devices if d.building == building]
                expected = sorted(mine, key=lambda d: (d.floor, d.id))
                listed = (await get(c, f"/api/v1/devices?building={building}"))["items"]
                assert [d["id"] for d in listed] == [d.id for d in expected]
                assert all(d["building"] == building for d in listed)
                detail = await get(c, f"/api/v1/buildings/{building}")
                for status in (rollups[building], detail["status"]):
                    assert status["devices_total"] == len(mine) == 8
                    assert status["devices_online"] == sum(d.status == "online" for d in mine)
                    assert status["devices_offline"] == sum(d.status == "offline" for d in mine)
                    assert status["low_battery"] == sum(d.low_battery for d in mine)
                assert [d["id"] for d in detail["offline_devices"]] == ["ib4-d5"] * (building == "ib4")
                assert [d["id"] for d in detail["low_battery_devices"]] == ["ib3-d1"] * (building == "ib3")
            assert rollups["ib1"]["extinguishers_out_of_service"] == 1 and rollups["ib1"]["active_alerts"] == 1
            assert (await get(c, f"/api/v1/devices/{extinguisher}"))["out_of_service"] is True
            assert rollups["ib3"]["devices_online"] == 2 and rollups["ib3"]["devices_unknown"] == 6

            # The whole list: every device once, by building, floor and id; paging agrees with it.
            everything = await get(c, "/api/v1/devices?limit=1000")
            assert everything["total"] == 48
            order = [(d["building"], d["floor"], d["id"]) for d in everything["items"]]
            assert order == sorted(order) and len({d["id"] for d in everything["items"]}) == 48
            pages = [await get(c, f"/api/v1/devices?limit=7&offset={o}") for o in range(0, 48, 7)]
            assert [d["id"] for p in pages for d in p["items"]] == [d["id"] for d in everything["items"]]

            # A device missing from the registry appears after the index was built: it joins its building.
            from rules.types import DeviceRef

            stranger = DeviceRef(building="ib3", device="ib3-new", kind="heat", registered=False)
            runtime.presence.reading(Reading(ref=stranger, ts_ms=t, values={"celsius": 20.0}))
            ib3 = await get(c, "/api/v1/devices?building=ib3")
            assert "ib3-new" in [d["id"] for d in ib3["items"]] and ib3["total"] == 9
            ib3_rollup = next(b for b in (await get(c, "/api/v1/buildings"))["items"] if b["id"] == "ib3")
            assert ib3_rollup["status"]["devices_total"] == 9
            assert (await get(c, "/api/v1/devices/ib3-new"))["registered"] is False
            assert (await get(c, "/api/v1/devices?building=ib2"))["total"] == 8

            # A grid-scoped token: only its buildings, counted only from their devices.
            scoped = (await get(c, "/api/v1/buildings", headers=G01))["items"]
            assert [b["id"] for b in scoped] == ["ib1", "ib3", "ib5"]
            assert sum(b["status"]["devices_total"] for b in scoped) == 25
            assert (await get(c, "/api/v1/devices?limit=1000", headers=G01))["total"] == 25
            assert (await c.get("/api/v1/buildings/ib2", headers=G01)).status == 403
            assert (await c.get("/api/v1/devices/ib2-d0", headers=G01)).status == 403
            assert (await c.get("/api/v1/devices?building=ib2", headers=G01)).status == 403
    finally:
        runtime.store.close()


def _maybe(*values: Any) -> Any:
    return st.sampled_from(values)


_ODD = _maybe(None, True, 0, 1, 5, 50.0, 5.5, float("nan"), float("inf"), "", "x", "online", "extinguisher")
_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "battery": st.one_of(_maybe(3.0, 19.9, 20.0, 80), _ODD, st.fixed_dictionaries({"value": _maybe(4.0, 90.0)})),
        "present": st.one_of(_maybe(True, False), _ODD),
        "obstructed": st.one_of(_maybe(True, False), _ODD),
        "pressure_mpa": st.one_of(_maybe(0.3, 1.2, 1.6), _ODD, st.fixed_dictionaries({"value": _maybe(0.2, 1.1)})),
        "fault": st.one_of(_maybe("", "valve"), _ODD),
    },
)
_TEXT = _maybe("", "x", "extinguisher", "smoke", "b1", "online")
_STATE = st.builds(
    DeviceState,
    device=_maybe("d1", "", "d" * 70),
    building=_maybe("b1", "b2", "", "b" * 70),
    kind=_maybe("extinguisher", "smoke", "unknown", "", "k" * 40),
    floor=_maybe(None, -1, 0, 7),
    grid=_maybe(None, "", "g9"),
    registered=_maybe(True, False),
    location=st.one_of(st.none(), _TEXT),
    heartbeat_s=_maybe(10, 300),
    last_seen_ms=_maybe(None, 0, 995_000, 1_000_000),
    last_values=_VALUES,
    battery=_maybe(None, 3.0, 19.9, 20.0, 80.0, float("nan")),
    status=_maybe(None, "online", "offline"),
    status_ts_ms=_maybe(None, 0, 999_000, 1_000_000),
)
_ENTRY = st.one_of(
    st.none(),
    st.builds(
        Device,
        id=_maybe("r1", "d1"),
        building=_maybe("b1", "b3"),
        kind=st.sampled_from(list(DeviceKind)),
        floor=_maybe(None, 2),
        location=_maybe(None, "", "stairwell"),
    ),
)


@settings(max_examples=600, deadline=None)
@given(state=_STATE, entry=_ENTRY, now=_maybe(1_000_000, 1_200_000, 2_000_000), supervised=st.booleans())
def test_a_device_row_is_its_presence_record_over_its_registry_entry(
    state: DeviceState, entry: Device | None, now: int, supervised: bool
) -> None:
    """``GET /buildings`` counts a device's facts and ``/devices`` shows its row: the two agree, each field is the
    record's own (the registry fills only what the record leaves empty), and a registry device presence does not know
    is its registry entry, status unknown."""
    from gateway.api import views

    grids = {"b1": "g1", "b3": "g3"}
    asked: list[str] = []

    def registry(device_id: str) -> Device | None:
        asked.append(device_id)
        return entry

    reader = views.DeviceReader(now_ms=now, building_grids=grids, registry=registry)
    facts = reader.facts("d1", state)
    fallback = entry if entry is not None else None
    own_id = state.device or (fallback.id if fallback else None)
    own_building = state.building or (fallback.building if fallback else None)
    if not own_id or not own_building:
        assert facts is None
        return
    assert facts is not None
    if supervised:  # an open supervisory alert: the route sets it on the facts, and the row must keep it
        facts.out_of_service = True
    row = reader.row("d1", state, facts)
    assert (row.id, row.building, row.kind, row.status, row.low_battery, row.out_of_service) == (
        facts.id,
        facts.building,
        facts.kind,
        facts.status,
        facts.low_battery,
        facts.out_of_service,
    )
    assert (row.id, row.building) == (own_id[:64], own_building[:64])
    assert row.status.value == state.state(now)
    assert row.registered == state.registered and row.last_seen_ms == state.last_seen_ms
    assert row.grid == ((state.grid or None) or grids.get(row.building))
    assert row.floor == (state.floor if state.floor is not None else (entry.floor if entry else None))
    low = row.battery is not None and row.battery < views.LOW_BATTERY_PERCENT
    assert row.low_battery == low
    assert set(asked) <= {"d1"}
    # A registry device presence does not know (no record): its entry alone.
    unknown = reader.facts("d1", None)
    if entry is None:
        assert unknown is None
        return
    assert unknown is not None and unknown.status == views.m.DeviceStatus.unknown
    assert (unknown.id, unknown.building, unknown.low_battery, unknown.out_of_service) == (
        entry.id,
        entry.building,
        False,
        False,
    )
    listed = reader.row("d1", None, unknown)
    assert (listed.floor, listed.registered, listed.values, listed.grid) == (
        entry.floor,
        True,
        {},
        grids.get(entry.building),
    )
