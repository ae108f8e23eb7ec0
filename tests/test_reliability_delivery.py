"""Notifications across a gateway crash, end to end: ``firegrid run`` as a subprocess, a Standard Webhooks receiver,
and the Aliyun SMS emulator of testkit/emulators (which verifies the ACS3-HMAC-SHA256 signature of every request).

tests/test_alerts_delivery.py drives the notifier in-process: 500/hang/429 then 200
with one webhook id, 410, 302, SMS timeout -> ``unknown``.  What only a real crash shows is added here:

* a webhook whose receiver hangs past ``timeout_s`` while the gateway is SIGKILLed: after the restart it is sent
  again with the SAME ``webhook-id`` and a valid signature, accepted once, and nothing follows the 200;
* an SMS request in flight (the provider is slow) when the gateway is SIGKILLed: after the restart the SMS is
  ``unknown`` (to reconcile with the provider), and the provider never sees a second request for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.emulators.aliyun import AliyunSms
from testkit.emulators.scenario import ALIYUN
from testkit.faults import WEBHOOK_SECRET, stack_config, wait_until
from testkit.gateway import Gateway, Publisher, store_rows
from testkit.services import MosquittoServer
from testkit.webhooks import WebhookCounter

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def aliyun() -> Iterator[AliyunSms]:
    """The SMS provider emulator, served from its own event loop thread (the test itself blocks while polling)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def make() -> AliyunSms:
        emulator = AliyunSms(
            access_key_id=ALIYUN["access_key_id"],
            access_key_secret=ALIYUN["access_key_secret"],
            sign_name=ALIYUN["sign_name"],
            templates={"SMS_100001"},
        )
        await emulator.start()
        return emulator

    emulator = asyncio.run_coroutine_threadsafe(make(), loop).result(10)
    try:
        yield emulator
    finally:
        # (a still-hanging scripted request would hold a graceful stop for its whole sleep: don't wait for it)
        with contextlib.suppress(TimeoutError, concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(2)

        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(TimeoutError, concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _outbox(db: Path) -> list[dict[str, Any]]:
    return store_rows(db, "SELECT msg_id, channel, event, state, attempts FROM outbox")


def test_crash_during_hung_webhook_and_slow_sms(tmp_path: Path, mosquitto: MosquittoServer, aliyun: AliyunSms) -> None:
    hook = WebhookCounter(WEBHOOK_SECRET).start()
    hook.script = [("hang", 4.0)]  # past timeout_s (1 s): the first attempt never gets its answer
    aliyun.script = [("hang", 20, "process")]  # the provider takes the SMS but answers far too late
    config, port = stack_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=None,
        extra={
            "notify": {
                "roster": [{"name": "grid worker", "phone": "+8613800000001", "role": "grid_worker"}],
                "routes": [{"name": "fire", "min_severity": "fire", "tiers": [{"roles": ["grid_worker"]}]}],
                "webhooks": [
                    {
                        "url": hook.url,
                        "secret": WEBHOOK_SECRET,
                        "allow_private": True,
                        "timeout_s": 1,
                        "events": ["alert.raised"],
                    }
                ],
                "sms": {
                    "provider": "aliyun",
                    "endpoint": aliyun.url,
                    "allow_private": True,
                    "timeout_s": 30,  # the crash comes first
                    **ALIYUN,
                    "templates": {"zh": {"template_id": "SMS_100001", "text": "{building}{location}{severity}{code}"}},
                },
                "retry": {"base_s": 0.1, "max_s": 0.5},
            }
        },
    )
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port, client_id="rel-delivery-pub")
    try:
        publisher.publish("firegrid/b03/d003/telemetry", json.dumps({"alarm": True, "obscuration": 0.5}))
        publisher.wait_acked()
        # both requests are in flight: the webhook hangs, the SMS provider is slow
        wait_until(lambda: aliyun.requests == 1 and len(hook.snapshot()) == 1, timeout=20, what="both in flight")
        sms_rows = [r for r in _outbox(db) if r["channel"] == "sms"]
        assert [r["state"] for r in sms_rows] == ["attempting"], sms_rows
        gateway.kill()
        gateway.start()
        wait_until(lambda: hook.accepted(), timeout=20, what="the webhook to be delivered after the restart")
        wait_until(
            lambda: {r["state"] for r in _outbox(db)} == {"sent", "unknown"}, timeout=20, what="the outbox to settle"
        )
        rows = _outbox(db)
        (sms,) = [r for r in rows if r["channel"] == "sms"]
        assert sms["state"] == "unknown"
        assert aliyun.requests == 1, "the SMS was sent again after the crash"
        assert aliyun.errors == []
        (webhook,) = [r for r in rows if r["channel"] == "webhook"]
        hits = hook.snapshot()
        assert [h.status for h in hits] == [0, 200], hits  # the hung attempt, then one delivery, nothing after
        assert {h.msg_id for h in hits} == {webhook["msg_id"]}  # the same id on every attempt
        assert all(h.signature_ok for h in hits)
        assert "SMS" in gateway.log_tail(200) and "unknown" in gateway.log_tail(200)
    finally:
        publisher.close()
        gateway.stop()
        hook.stop()
