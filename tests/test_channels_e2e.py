"""Group robots, action links and the voice tier through ``firegrid run`` with a real Mosquitto and the emulators:
a fire posts one WeCom and one DingTalk message per incident update with valid signatures; opening its action
link changes nothing, the page's POST acknowledges and the timeline names the recipient, a tampered link is
refused; an unacknowledged fire reaches the voice tier, the emulator receives exactly one signed TTS call per
person, and a key press in the signed receipt acknowledges."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from testkit.emulators.aliyun import AliyunSms
from testkit.emulators.robots import DingTalkRobot, WeComRobot
from testkit.emulators.scenario import ALIYUN, DINGTALK, RECEIPT_SECRET, WECOM, sms_section, voice_section
from testkit.emulators.voice import AliyunVoice
from testkit.gateway import Gateway, Publisher, write_config
from testkit.services import MosquittoServer

pytestmark = pytest.mark.timeout(120)
GRID_WORKER = "+8613800000001"
LEADER = "+8613800000014"


@pytest.fixture
async def emulators() -> AsyncIterator[tuple[WeComRobot, DingTalkRobot, AliyunVoice, AliyunSms]]:
    wecom = WeComRobot(key=WECOM["key"])
    dingtalk = DingTalkRobot(key=DINGTALK["key"], secret=DINGTALK["secret"])
    voice = AliyunVoice(
        access_key_id=ALIYUN["access_key_id"],
        access_key_secret=ALIYUN["access_key_secret"],
        templates={"TTS_100001", "TTS_100002"},
    )
    sms = AliyunSms(
        access_key_id=ALIYUN["access_key_id"],
        access_key_secret=ALIYUN["access_key_secret"],
        sign_name=ALIYUN["sign_name"],
        templates={"SMS_100001", "SMS_100002"},
    )
    async with wecom, dingtalk, voice, sms:
        yield wecom, dingtalk, voice, sms  # type: ignore[misc]


def http(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    for k, v in {"Authorization": "Bearer test-admin", **(headers or {})}.items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_robots_links_and_voice_through_the_gateway(
    tmp_path: Path, mosquitto: MosquittoServer, emulators: tuple[WeComRobot, DingTalkRobot, AliyunVoice, AliyunSms]
) -> None:
    wecom, dingtalk, voice, sms = emulators
    robots = [
        {"name": "grid-wecom", "platform": "wecom", "endpoint": wecom.url, "allow_private": True, **WECOM},
        {"name": "station-dingtalk", "platform": "dingtalk", "endpoint": dingtalk.url, "allow_private": True}
        | DINGTALK,
    ]
    extra = {
        "notify": {
            "ack_timeout_s": 3,
            "roster": [
                {"name": "王网格", "phone": GRID_WORKER, "role": "grid_worker", "grids": ["g0"]},
                {"name": "郑站长", "phone": LEADER, "role": "station_leader", "grids": ["g0"]},
            ],
            "routes": [
                {
                    "name": "fire",
                    "tiers": [
                        {"roles": ["grid_worker"], "robots": ["grid-wecom", "station-dingtalk"]},
                        {"roles": ["station_leader"], "voice": True},
                    ],
                }
            ],
            "robots": robots,
            "voice": voice_section("aliyun", voice.url),
            "sms": sms_section("aliyun", sms.url),
            "links": {"base_url": "http://127.0.0.1:0", "secret": "e2e-links-secret-0123456789"},
        },
        "buildings": [
            {"id": "b00", "name": "阳光花园1号楼", "grid": "g0", "floors": 18},
            {"id": "b01", "name": "阳光花园2号楼", "grid": "g0", "floors": 18},
        ],
        "devices": [
            {"id": f"d{b}{i}", "building": f"b0{b}", "kind": "smoke", "floor": 3} for b in (0, 1) for i in (0, 1)
        ],
    }
    config, port = write_config(tmp_path, mqtt_url=mosquitto.url, influx_url=None, extra=extra)
    # The links point at the gateway itself: its port is known only now.
    text = config.read_text().replace("http://127.0.0.1:0", f"http://127.0.0.1:{port}")
    config.write_text(text)
    gateway = Gateway(config, port, tmp_path / "gateway.log")
    await asyncio.to_thread(gateway.start)
    publisher = Publisher(mosquitto.port, client_id="channels-pub")
    try:
        now = int(time.time() * 1000)
        publisher.publish("firegrid/b00/d00/telemetry", json.dumps({"ts": now, "seq": 1, "alarm": True}))
        # The fire: one message per robot (signatures checked by the emulators).
        await wecom.wait_for(lambda: len(wecom.messages) >= 1, within=20)
        await dingtalk.wait_for(lambda: len(dingtalk.messages) >= 1, within=20)
        assert "阳光花园1号楼" in wecom.messages[0]["content"] and "3层" in wecom.messages[0]["content"]
        assert dingtalk.messages[0]["title"].startswith("火警·阳光花园1号楼")
        # Nobody acknowledges: after 3 s the voice tier calls the station leader, once.
        await voice.wait_for(lambda: len(voice.calls) == 1, within=20)
        (call,) = voice.calls
        assert call["phone"] == LEADER[3:] and call["params"]["building"] == "阳光花园1号楼"
        # ... and the groups hear it escalated.
        await wecom.wait_for(lambda: any("已升级" in m["content"] for m in wecom.messages), within=20)
        # The signed receipt with key 1 acknowledges the incident by the leader.
        body = json.dumps(voice.receipt(call, dtmf="1")).encode()
        stamp = datetime.now(tz=UTC)
        headers = {"webhook-id": "msg_r1", "webhook-timestamp": str(int(stamp.timestamp()))}
        headers["webhook-signature"] = Webhook(RECEIPT_SECRET).sign("msg_r1", stamp, body.decode())
        status, answer = await asyncio.to_thread(http, port, "POST", "/api/v1/voice/receipts", body, headers)
        assert status == 200 and json.loads(answer)["acknowledged"], answer
        status, detail = await asyncio.to_thread(http, port, "GET", "/api/v1/incidents")
        first = json.loads(detail)["items"][0]
        assert first["state"] == "acknowledged"
        await wecom.wait_for(lambda: any("已确认 (郑站长)" in m["content"] for m in wecom.messages), within=20)

        # A second fire: its action link, opened, changes nothing; the page's POST acknowledges.
        seen = len(wecom.messages)
        publisher.publish("firegrid/b01/d10/telemetry", json.dumps({"ts": now, "seq": 1, "alarm": True}))
        await wecom.wait_for(lambda: any("阳光花园2号楼" in m["content"] for m in wecom.messages[seen:]), within=20)
        message = next(m["content"] for m in wecom.messages[seen:] if "阳光花园2号楼" in m["content"])
        link = re.search(r"\((http://127\.0\.0\.1:\d+/l/[^)]+)\)", message)
        assert link is not None, message
        path = urllib.parse.urlsplit(link.group(1)).path
        status, page = await asyncio.to_thread(http, port, "GET", path)
        assert status == 200 and "确认收到" in page
        status, page = await asyncio.to_thread(http, port, "GET", path[:-3] + "AAA")
        assert status == 403
        items = json.loads((await asyncio.to_thread(http, port, "GET", "/api/v1/incidents"))[1])["items"]
        second = next(i for i in items if i["building"] == "b01")
        assert second["state"] == "open"  # opening the link changed nothing
        form = urllib.parse.urlencode({"action": "ack", "by": "钱志愿"}).encode()
        form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
        status, page = await asyncio.to_thread(http, port, "POST", path, form, form_headers)
        assert status == 200, page
        status, detail = await asyncio.to_thread(http, port, "GET", f"/api/v1/incidents/{second['id']}")
        incident = json.loads(detail)
        assert incident["state"] == "acknowledged"
        step = next(t for t in incident["timeline"] if t["action"] == "acknowledged")
        assert step["by"] == "钱志愿" and step["actor"] == "link:robot:grid-wecom"
        # The first incident's leader was called exactly once; every request was signed as documented.
        assert sum(1 for c in voice.calls if c["out_id"] == call["out_id"]) == 1
        assert wecom.errors == dingtalk.errors == voice.errors == sms.errors == []
        assert wecom.throttled == dingtalk.throttled == 0
    finally:
        publisher.close()
        await asyncio.to_thread(gateway.stop)
