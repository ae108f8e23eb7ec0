"""The whole path through ``firegrid run``: alarm readings over real Mosquitto -> rules -> alert store -> signed
webhooks (verified with ``standardwebhooks``) and SMS (verified by the Aliyun emulator), one SMS per person for a
building full of alarming detectors, and an acknowledgement by SMS reply through the HTTP API."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from testkit.emulators.aliyun import AliyunSms
from testkit.emulators.scenario import ALIYUN, INBOUND_SECRET, WEBHOOK_SECRET, sms_section
from testkit.emulators.webhook_receiver import WebhookReceiver
from testkit.gateway import Gateway, Publisher, write_config
from testkit.services import MosquittoServer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def hook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(WEBHOOK_SECRET) as receiver:
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


async def test_building_full_of_alarms_through_the_gateway(
    tmp_path: Path, mosquitto: MosquittoServer, hook: WebhookReceiver, aliyun: AliyunSms
) -> None:
    notify = {
        "roster": [
            {"name": "王网格", "phone": "+8613800000001", "role": "grid_worker", "grids": ["g0"]},
            {"name": "李站长", "phone": "+8613800000002", "role": "station_leader", "grids": ["g0"]},
        ],
        "routes": [{"name": "fire", "tiers": [{"roles": ["grid_worker", "station_leader"]}]}],
        "webhooks": [
            {
                "url": hook.endpoint,
                "secret": WEBHOOK_SECRET,
                "allow_private": True,
                "events": ["alert.raised", "incident.*"],
                "min_severity": "fire",
            }
        ],
        "sms": sms_section("aliyun", aliyun.url),
    }
    config, port = write_config(
        tmp_path, mqtt_url=mosquitto.url, influx_url=None, devices=30, buildings=3, extra={"notify": notify}
    )
    gateway = Gateway(config, port, tmp_path / "gateway.log")
    await asyncio.to_thread(gateway.start)
    publisher = Publisher(mosquitto.port, client_id="e2e-pub")
    try:
        # Every detector of building b00 (d000, d003, ... in grid g0) goes into alarm.
        devices = [f"d{d:03d}" for d in range(0, 30, 3)]
        now = int(time.time() * 1000)
        for seq, device in enumerate(devices):
            payload = {"ts": now, "seq": seq + 1, "obscuration": 12.5, "alarm": True}
            publisher.publish(f"firegrid/b00/{device}/telemetry", json.dumps(payload))
        await hook.wait_for(lambda: len(hook.of_type("alert.raised")) >= len(devices), within=30)
        await aliyun.wait_for(lambda: len(aliyun.messages) >= 2, within=30)
        assert hook.errors == [] and aliyun.errors == []
        raised = {d.body["data"]["device"] for d in hook.of_type("alert.raised")}
        assert raised == set(devices)
        assert len(hook.of_type("incident.opened")) == 1
        assert sorted(m["phone"] for m in aliyun.messages) == ["13800000001", "13800000002"]
        code = aliyun.messages[0]["params"]["code"]

        # The grid worker replies with the code: every alert of the incident is acknowledged.
        body = json.dumps({"from": "+8613800000001", "text": f"收到 {code}"}).encode()
        stamp = int(time.time())
        sig = Webhook(INBOUND_SECRET).sign("msg_reply1", datetime.fromtimestamp(stamp, tz=UTC), body.decode())
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/sms/inbound",
            data=body,
            method="POST",
            headers={
                "content-type": "application/json",
                "webhook-id": "msg_reply1",
                "webhook-timestamp": str(stamp),
                "webhook-signature": sig,
            },
        )
        reply = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(request, timeout=10).read()))
        assert len(reply["acknowledged"]) == len(devices)
        status, text = await asyncio.to_thread(gateway.get, "/api/v1/alerts?limit=100", token="test-admin")
        assert status == 200, text
        items = json.loads(text)["items"]
        assert len(items) == len(devices)
        assert {(a["state"], a["acknowledged_by"]) for a in items} == {("acknowledged", "sms:王网格")}
        assert len(aliyun.messages) == 2  # ten detectors, two people, two SMS
    finally:
        publisher.close()
        await asyncio.to_thread(gateway.stop)
