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

from gateway.api import create_api_app
from gateway.api.testing import build_runtime, config_for_tests, inject, now_ms, tick
from gateway.contract import registry_from_config
from rules.types import Reading, StatusChange

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
    from gateway.influx import InfluxClient

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
