"""One hanging webhook receiver must not delay the fire notifications of the others.

Two webhook endpoints: A hangs on every request (past its ``timeout_s``), B answers at once.  Ten detectors in ten
buildings go into alarm together.  B must have every ``alert.raised`` before A's first request has even timed out:
otherwise B's fire pages queue behind A's timeouts (head-of-line blocking in the shared delivery workers), and one
broken third-party receiver makes the micro fire station's page late.

Found: worse than late.  The notifier runs ``notify.workers`` (4) deliveries per channel and picks due rows in
(priority, id) order, ``workers * 3`` at a time; A's rows come first and are retried as soon as their backoff ends,
so all four webhook workers sit in A's timeouts over and over and B's later fire pages are never sent while A keeps
hanging (40 s in this test).  The notifier now lets one endpoint hold at most half of the webhook workers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from testkit.faults import FAST_RULES, WEBHOOK_SECRET, stack_config, wait_until
from testkit.gateway import Gateway, Publisher
from testkit.services import MosquittoServer
from testkit.webhooks import WebhookCounter

pytestmark = pytest.mark.timeout(60)

ALARMS = 10
A_TIMEOUT_S = 3.0


def test_a_hanging_receiver_does_not_delay_the_others(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    hanging = WebhookCounter(WEBHOOK_SECRET, path="/a").start()
    hanging.script = [("hang", 30.0)] * 1000
    healthy = WebhookCounter(WEBHOOK_SECRET, path="/b").start()
    hook = {"secret": WEBHOOK_SECRET, "allow_private": True, "events": ["alert.raised"]}
    config, port = stack_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=None,
        rules=FAST_RULES,
        extra={
            "notify": {
                "webhooks": [
                    {"url": hanging.url, "timeout_s": A_TIMEOUT_S, **hook},
                    {"url": healthy.url, "timeout_s": A_TIMEOUT_S, **hook},
                ],
                "retry": {"base_s": 0.1, "max_s": 1.0},
            }
        },
    )
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port, client_id="rel-hol-pub")
    try:
        now = int(time.time() * 1000)
        for d in range(ALARMS):
            publisher.publish(f"firegrid/b{d:02d}/d{d:03d}/telemetry", json.dumps({"ts": now, "alarm": True}))
        publisher.wait_acked()
        wait_until(lambda: len(healthy.of_type("alert.raised")) >= ALARMS, timeout=20, what="B to get every alarm")
        first_a = min(h.at for h in hanging.snapshot())
        last_b = max(h.at for h in healthy.of_type("alert.raised"))
        assert last_b < first_a + A_TIMEOUT_S, (
            f"B's last fire page came {last_b - first_a:.1f} s after A's first request: it waited for A's timeouts"
        )
    finally:
        publisher.close()
        gateway.stop()
        hanging.stop()
        healthy.stop()
