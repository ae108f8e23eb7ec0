"""Replay protection must not eat a genuine alarm.

The contract (docs/telemetry.md) calls ``seq`` "the device's message counter" and drops a repeated ``(device, seq)``
within ``replay_window_s`` (600 s) as ``duplicate``.  A replayed or redelivered message IS dropped (see
tests/test_reliability_hostile.py, case ``replay-second``).  But a detector that reboots (a power cut: common in a
fire) restarts its counter, and for up to ten minutes every new message whose ``seq`` it had already used before the
reboot is dropped too, even though it carries a new timestamp and new values.  If the first of those says
``alarm: true``, the fire alarm is lost or late: the worst failure firegrid can have.

The dedup key is therefore the device, the ``seq`` and the sample's values: a replay repeats them, a rebooted
detector's alarm does not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from testkit.faults import FAST_RULES, alerts_rows, stack_config, wait_until
from testkit.gateway import Gateway, Publisher
from testkit.services import MosquittoServer

pytestmark = pytest.mark.timeout(60)


def test_alarm_after_a_reboot_that_restarted_seq_is_not_a_duplicate(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    config, port = stack_config(tmp_path, mqtt_url=mosquitto.url, influx_url=None, rules=FAST_RULES)
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port, client_id="rel-replay-pub")
    topic = "firegrid/b03/d003/telemetry"
    start = int(time.time() * 1000) - 30_000
    try:
        for seq in range(4):  # before the reboot: quiet
            publisher.publish(topic, json.dumps({"ts": start + seq * 1000, "seq": seq, "obscuration": 0.1}))
        # power cut, reboot, the counter starts again: smoke
        publisher.publish(topic, json.dumps({"ts": start + 20_000, "seq": 0, "obscuration": 4.0, "alarm": True}))
        publisher.wait_acked()
        wait_until(lambda: gateway.metric("firegrid_mqtt_messages_total") >= 5, timeout=20, what="all five messages")
        assert gateway.metric("firegrid_rejections_total", reason="duplicate") == 0
        wait_until(
            lambda: any(r["key"] == "smoke-alarm/b03/d003" for r in alerts_rows(tmp_path / "firegrid.sqlite")),
            timeout=10,
            what="the fire alert of the rebooted detector",
        )
    finally:
        publisher.close()
        gateway.stop()
