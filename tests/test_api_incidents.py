"""``/api/v1/incidents/{id}`` and its steps, ``/api/v1/stations``: over the real rules engine and alert store of
``examples/community.yaml`` (readings injected as the pipeline feeds them), through the real aiohttp app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from gateway.api import create_api_app
from gateway.api.testing import build_runtime, config_for_tests, inject

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
OPERATOR = {"Authorization": "Bearer demo-operator-token"}
VIEWER = {"Authorization": "Bearer demo-viewer-token"}
G01 = {"Authorization": "Bearer demo-g01-token"}


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c


def fire_on_floor(runtime: Any, building: str = "yg01", floor: int = 9) -> int:
    """Both smoke detectors of one floor in alarm: one incident."""
    changes = inject(runtime, f"{building}-sd-{floor:02d}a", {"alarm": True, "obscuration": 12.0})
    changes += inject(runtime, f"{building}-sd-{floor:02d}b", {"alarm": True, "obscuration": 14.0})
    incidents = {c.incident_id for c in changes if c.incident_id is not None}
    assert len(incidents) == 1, changes
    return incidents.pop()


async def test_the_loop_through_the_api(client: TestClient, runtime: Any) -> None:
    incident = fire_on_floor(runtime)
    alerts = runtime.store.list_alerts(open_only=True)
    assert len(alerts) >= 2

    r = await client.post(f"/api/v1/incidents/{incident}/ack", json={"by": "值班员小李"}, headers=VIEWER)
    assert r.status == 403  # acting needs the operator role
    r = await client.post(f"/api/v1/incidents/{incident}/ack", json={"by": "值班员小李"}, headers=OPERATOR)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["state"] == "acknowledged"
    assert {a["state"] for a in body["alerts"]} == {"acknowledged"}
    assert body["floors"] == [9] and body["device_count"] == 2
    r = await client.post(f"/api/v1/incidents/{incident}/ack", json={}, headers=OPERATOR)
    assert r.status == 409 and r.content_type == "application/problem+json"

    r = await client.post(f"/api/v1/incidents/{incident}/dispatch", json={"station": "st-nope"}, headers=OPERATOR)
    assert r.status == 422
    r = await client.post(f"/api/v1/incidents/{incident}/dispatch", json={}, headers=OPERATOR)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["state"] == "dispatched" and body["station"] == "st-yg"
    assert body["dispatch"]["station"] == "st-yg" and "nearest available" in body["dispatch"]["reason"]
    assert body["dispatch"]["distance_m"] > 0 and body["dispatch"]["eta_s"] > 0
    assert set(body["dispatch"]["members"]) <= {"孙浩", "马丽", "刘洋"}
    paged = {p["recipient"] for p in body["pages"]}
    assert set(body["dispatch"]["members"]) <= paged
    clock = body["clock"]
    assert clock["on_scene_deadline_ms"] == clock["dispatched_ms"] + 180_000

    r = await client.get("/api/v1/stations", headers=VIEWER)
    assert r.status == 200
    stations = {s["id"]: s for s in (await r.json())["items"]}
    assert stations["st-yg"]["committed_to"] == incident and stations["st-xh"]["committed_to"] is None
    assert stations["st-yg"]["location"] == {"lat": 30.2797, "lon": 120.1597}
    assert [m["name"] for m in stations["st-yg"]["members"]] == ["孙浩", "马丽", "刘洋"]
    r = await client.get("/api/v1/stations", headers=G01)
    # st-xh covers hp01 and st-df yg03, both in g01; a station covering only other grids would be hidden.
    assert [s["id"] for s in (await r.json())["items"]] == ["st-yg", "st-xh", "st-df"]

    r = await client.post(
        f"/api/v1/incidents/{incident}/external-ref", json={"ref": "WO-2024-001", "system": "网格通"}, headers=OPERATOR
    )
    assert r.status == 200 and (await r.json())["external_ref"] == "WO-2024-001"
    r = await client.post("/api/v1/incidents/ref:WO-2024-001/arrive", json={"by": "孙浩"}, headers=OPERATOR)
    assert r.status == 200, await r.text()
    assert (await r.json())["state"] == "on_scene"
    r = await client.get("/api/v1/incidents?external_ref=WO-2024-001", headers=VIEWER)
    assert [i["id"] for i in (await r.json())["items"]] == [incident]

    r = await client.post(f"/api/v1/incidents/{incident}/resolve", json={"note": "x"}, headers=OPERATOR)
    assert r.status == 422  # the cause is required
    r = await client.post(
        f"/api/v1/incidents/{incident}/resolve",
        json={"cause": "real_fire", "note": "厨房起火，已扑灭"},
        headers=OPERATOR,
    )
    assert r.status == 200
    body = await r.json()
    assert body["state"] == "resolved" and body["cause"] == "real_fire"
    assert {(a["state"], a["cause"]) for a in body["alerts"]} == {("resolved", "real_fire")}
    steps = [(t["action"], t["by"], t["actor"]) for t in body["timeline"] if t["action"] != "paged"]
    assert steps == [
        ("opened", "system", "system"),
        ("acknowledged", "值班员小李", "micro-station"),
        ("dispatched", "micro-station", "micro-station"),
        ("external_ref", "micro-station", "micro-station"),
        ("on_scene", "孙浩", "micro-station"),
        ("resolved", "micro-station", "micro-station"),
    ]
    assert all(t["ts_ms"] > 0 for t in body["timeline"])
    assert body["clock"]["resolved_ms"] is not None and body["clock"]["on_scene_ms"] is not None
    r = await client.post(f"/api/v1/incidents/{incident}/arrive", json={}, headers=OPERATOR)
    assert r.status == 409

    r = await client.get("/api/v1/incidents", headers=VIEWER)
    [item] = (await r.json())["items"]
    assert {k: item[k] for k in ("state", "station", "floors", "device_count")} == {
        "state": "resolved",
        "station": "st-yg",
        "floors": [9],
        "device_count": 2,
    }


async def test_scope_and_missing_incidents(client: TestClient, runtime: Any) -> None:
    incident = fire_on_floor(runtime, "xh01", 12)  # grid g02
    r = await client.get(f"/api/v1/incidents/{incident}", headers=G01)
    assert r.status == 403
    r = await client.post(f"/api/v1/incidents/{incident}/ack", json={}, headers=G01)
    assert r.status == 403
    assert runtime.store.get_incident(incident).incident.state == "open"
    for path in ("/api/v1/incidents/999999", "/api/v1/incidents/ref:nope"):
        r = await client.get(path, headers=VIEWER)
        assert r.status == 404 and r.content_type == "application/problem+json"
    r = await client.post(
        f"/api/v1/incidents/{incident}/dispatch", json={"station": "st-xh", "members": ["何军"]}, headers=OPERATOR
    )
    assert r.status == 422
    r = await client.post(f"/api/v1/incidents/{incident}/dispatch", json={"members": ["何军"]}, headers=OPERATOR)
    assert r.status == 200
    body = await r.json()
    assert body["station"] is None and body["dispatch"]["members"] == ["何军"]


async def test_the_openapi_document_lists_the_loop(client: TestClient) -> None:
    spec = await (await client.get("/openapi.json")).json()
    for path in ("ack", "dispatch", "arrive", "resolve", "external-ref"):
        assert "post" in spec["paths"][f"/api/v1/incidents/{{id}}/{path}"]
    assert "get" in spec["paths"]["/api/v1/incidents/{id}"] and "get" in spec["paths"]["/api/v1/stations"]


def signed(runtime: Any, document: dict[str, Any], msg_id: str) -> tuple[bytes, dict[str, str]]:
    secret = runtime.config.notify.sms.inbound_secret.get_secret_value()
    body = orjson.dumps(document)
    now = datetime.now(tz=UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        "Content-Type": "application/json",
    }
    return body, headers


async def test_sms_replies_acknowledge_or_mark_on_scene(client: TestClient, runtime: Any) -> None:
    incident = fire_on_floor(runtime)
    code = runtime.store.get_incident(incident).incident.ack_code
    # "收到 <code>": an acknowledgement (the arrival word must follow the code), by the member, number masked.
    body, headers = signed(runtime, {"from": "+8613800000001", "text": f"收到 {code}"}, "msg_a1")
    r = await client.post("/api/v1/sms/inbound", data=body, headers=headers)
    assert r.status == 200, await r.text()
    detail = runtime.store.get_incident(incident)
    assert detail.incident.state == "acknowledged"
    assert {a.acknowledged_by for a in detail.alerts} == {"sms:王建国"}
    step = next(e for e in detail.timeline if e.action == "acknowledged")
    assert (step.actor, step.by) == ("sms:+86138****0001", "王建国")
    # "<code> A": on scene.
    body, headers = signed(runtime, {"from": "+8613800000011", "text": f"{code} A"}, "msg_a2")
    r = await client.post("/api/v1/sms/inbound", data=body, headers=headers)
    assert r.status == 200, await r.text()
    detail = runtime.store.get_incident(incident)
    assert detail.incident.state == "on_scene"
    step = next(e for e in detail.timeline if e.action == "on_scene")
    assert (step.actor, step.by, step.detail) == ("sms:+86138****0011", "孙浩", {"via": "sms"})
    # Again: it is already on scene.
    body, headers = signed(runtime, {"from": "+8613800000011", "text": f"{code}到"}, "msg_a3")
    r = await client.post("/api/v1/sms/inbound", data=body, headers=headers)
    assert r.status == 409 and r.content_type == "application/problem+json"
