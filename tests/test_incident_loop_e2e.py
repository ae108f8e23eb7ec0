"""The closed loop through ``firegrid run`` with a real Mosquitto, the Aliyun SMS emulator and a real governance
receiver: a confirmed fire on one floor is ONE incident; one acknowledgement acknowledges all its alerts; dispatch
without a station picks the nearest covering station and each of its on-duty members' phones gets exactly one page;
a signed ``<code> 到`` reply marks it on scene; resolving with a cause closes every alert; the timeline lists every
step with its time and actor; the governance platform hears the incident-level events with their alerts."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from testkit.emulators.aliyun import AliyunSms
from testkit.emulators.scenario import ALIYUN, GOV_SECRET, INBOUND_SECRET, sms_section
from testkit.emulators.webhook_receiver import WebhookReceiver
from testkit.gateway import Gateway, Publisher, wait_for, write_config
from testkit.services import MosquittoServer

pytestmark = pytest.mark.timeout(120)

GRID_WORKER = "+8613800000001"
NEAR = {"孙队员": "+8613800000011", "周队员": "+8613800000012"}
FAR = {"吴队员": "+8613800000013"}
LEADER = "+8613800000014"


@pytest.fixture
async def governance() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(GOV_SECRET, path="/gov") as receiver:
        yield receiver  # type: ignore[misc]


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


def config_extra(governance: WebhookReceiver, aliyun: AliyunSms) -> dict[str, Any]:
    member = {"role": "station_member", "grids": ["g0"]}
    roster = [
        {"name": "王网格", "phone": GRID_WORKER, "role": "grid_worker", "grids": ["g0"]},
        *({"name": n, "phone": p, **member} for n, p in {**NEAR, **FAR}.items()),
        {"name": "郑站长", "phone": LEADER, "role": "station_leader", "grids": ["g0"]},
    ]
    return {
        "notify": {
            "roster": roster,
            # Only the grid worker is paged by the route: the stations' members hear of a fire when dispatched.
            "routes": [{"name": "fire", "tiers": [{"roles": ["grid_worker"]}, {"roles": ["station_leader"]}]}],
            "governance": {"url": governance.endpoint, "secret": GOV_SECRET, "allow_private": True, "timeout_s": 2},
            "sms": sms_section("aliyun", aliyun.url),
        },
        "buildings": [
            {
                "id": "b00",
                "name": "阳光花园 1号楼",
                "grid": "g0",
                "floors": 18,
                "location": {"lat": 31.2, "lon": 121.4},
            },
            {"id": "b01", "name": "阳光花园 2号楼", "grid": "g0", "floors": 18},
        ],
        "devices": [{"id": f"d{i}", "building": "b00", "kind": "smoke", "floor": 5} for i in range(3)],
        "stations": [
            {
                "id": "st-far",
                "name": "西门微型消防站",
                "location": {"lat": 31.218, "lon": 121.4},
                "grids": ["g0"],
                "members": list(FAR),
            },
            {
                "id": "st-near",
                "name": "东门微型消防站",
                "location": {"lat": 31.203, "lon": 121.4},
                "grids": ["g0"],
                "members": list(NEAR),
                "leader": "郑站长",
            },
        ],
        "dispatch": {"travel_speed_kmh": 15},
    }


def call(
    port: int, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Authorization", "Bearer test-admin")
    request.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def signed_reply(sender: str, text: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"from": sender, "text": text}).encode()
    stamp = int(time.time())
    msg_id = f"msg_{stamp}_{sender[-4:]}"
    sig = Webhook(INBOUND_SECRET).sign(msg_id, datetime.fromtimestamp(stamp, tz=UTC), body.decode())
    return body, {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": sig}


async def test_the_closed_loop_through_the_gateway(
    tmp_path: Path, mosquitto: MosquittoServer, governance: WebhookReceiver, aliyun: AliyunSms
) -> None:
    config, port = write_config(
        tmp_path, mqtt_url=mosquitto.url, influx_url=None, extra=config_extra(governance, aliyun)
    )
    gateway = Gateway(config, port, tmp_path / "gateway.log")
    await asyncio.to_thread(gateway.start)
    publisher = Publisher(mosquitto.port, client_id="loop-pub")
    try:
        # Two smoke detectors of floor 5 in alarm: two alarms and the confirmed fire, one incident.
        now = int(time.time() * 1000)
        for seq, device in enumerate(("d0", "d1")):
            payload = {"ts": now, "seq": seq + 1, "alarm": True}
            publisher.publish(f"firegrid/b00/{device}/telemetry", json.dumps(payload))

        def incidents() -> list[dict[str, Any]]:
            status, body = call(port, "GET", "/api/v1/incidents")
            return body["items"] if status == 200 else []

        def confirmed() -> list[dict[str, Any]]:
            found = incidents()
            return found if found and found[0]["confirmed"] and found[0]["alert_count"] >= 3 else []

        [incident] = await asyncio.to_thread(wait_for, confirmed, timeout=20, what="the confirmed fire")
        assert incident["floors"] == [5] and incident["device_count"] == 2 and incident["state"] == "open"
        incident_id = incident["id"]
        await aliyun.wait_for(lambda: len(aliyun.messages) >= 1, within=20)
        code = aliyun.messages[0]["params"]["code"]
        assert [m["phone"] for m in aliyun.messages] == [GRID_WORKER[3:]]

        # One acknowledgement acknowledges every alert.
        status, body = await asyncio.to_thread(
            call, port, "POST", f"/api/v1/incidents/{incident_id}/ack", {"by": "值班员"}
        )
        assert status == 200, body
        assert len(body["alerts"]) == 3 and {a["state"] for a in body["alerts"]} == {"acknowledged"}

        # Dispatch without a station: the nearest covering station, and each of its members paged once.
        status, body = await asyncio.to_thread(call, port, "POST", f"/api/v1/incidents/{incident_id}/dispatch", {})
        assert status == 200, body
        assert body["dispatch"]["station"] == "st-near" and body["state"] == "dispatched"
        assert sorted(body["dispatch"]["members"]) == sorted(NEAR)
        assert 300 < body["dispatch"]["distance_m"] < 370 and "nearest available" in body["dispatch"]["reason"]
        near_phones = sorted(p[3:] for p in NEAR.values())
        await aliyun.wait_for(
            lambda: sorted(m["phone"] for m in aliyun.messages if m["phone"] in near_phones) == near_phones, within=20
        )
        for message in aliyun.messages[1:]:
            assert message["params"]["code"] == code and message["params"]["building"] == "阳光花园 1号楼"

        # "<code> 到" from a member, signed: on scene.
        reply, headers = signed_reply(NEAR["孙队员"], f"{code} 到")
        status, body = await asyncio.to_thread(call, port, "POST", "/api/v1/sms/inbound", reply, headers=headers)
        assert status == 200, body
        status, body = await asyncio.to_thread(call, port, "GET", f"/api/v1/incidents/{incident_id}")
        assert body["state"] == "on_scene" and body["clock"]["on_scene_ms"] is not None

        status, body = await asyncio.to_thread(
            call, port, "POST", f"/api/v1/incidents/{incident_id}/resolve", {"cause": "real_fire", "note": "已扑灭"}
        )
        assert status == 200, body
        assert {(a["state"], a["cause"]) for a in body["alerts"]} == {("resolved", "real_fire")}
        steps = [(t["action"], t["by"], t["actor"]) for t in body["timeline"] if t["action"] != "paged"]
        assert steps == [
            ("opened", "system", "system"),
            ("acknowledged", "值班员", "t"),
            ("dispatched", "t", "t"),
            ("on_scene", "孙队员", "sms:+86138****0011"),
            ("resolved", "t", "t"),
        ]
        assert all(isinstance(t["ts_ms"], int) and t["ts_ms"] >= now - 60_000 for t in body["timeline"])
        paged = sorted(t["detail"]["recipient"] for t in body["timeline"] if t["action"] == "paged")
        assert paged == sorted(["王网格", *NEAR])

        # The governance platform hears each step once, as the incident with its alerts.
        wanted = ["opened", "acknowledged", "dispatched", "on_scene", "resolved"]
        await governance.wait_for(lambda: all(governance.of_type(f"incident.{w}") for w in wanted), within=20)
        for step in wanted:
            [event] = governance.of_type(f"incident.{step}")
            assert event.body["data"]["id"] == incident_id and event.body["data"]["alerts"]
        assert governance.errors == [] and aliyun.errors == []
        # Exactly one page per phone: the grid worker's fire page, one dispatch page per member, nobody far away.
        assert sorted(m["phone"] for m in aliyun.messages) == sorted([GRID_WORKER[3:], *near_phones])
    finally:
        publisher.close()
        await asyncio.to_thread(gateway.stop)
