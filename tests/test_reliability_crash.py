"""The gateway SIGKILLed again and again while readings, alert transitions and notifications flow.

``firegrid run`` is a real subprocess in front of real Mosquitto, InfluxDB and a real aiohttp webhook receiver that
verifies every Standard Webhooks signature.  After the last restart:

* no reading lost: InfluxQL counts exactly the readings the broker acknowledged to the publisher;
* no alert raised twice: one alert row per key in the SQLite store, one listed by the API, one ``alert.raised``
  webhook id per alert;
* no notification acknowledged by its receiver sent twice.  Delivery is at-least-once by design (a 2xx answered in
  the instant before the SIGKILL, before the outcome is committed, is resent with the same ``webhook-id`` so the
  receiver can drop it): a repeat is allowed ONLY when a kill landed right after the first 2xx, and must carry the
  same id.  Any other repeat fails the test;
* nothing lost: every outbox row ends ``sent`` and its id reached the receiver.

Twenty kills at random moments; the long version, with broker and InfluxDB faults too, is
``bench/soak.py``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from testkit.faults import (
    FAST_RULES,
    WEBHOOK_SECRET,
    alerts_rows,
    outbox_rows,
    stack_config,
    wait_until,
)
from testkit.gateway import Gateway, Publisher
from testkit.services import InfluxServer, MosquittoServer
from testkit.webhooks import WebhookCounter

pytestmark = pytest.mark.timeout(120)

KILLS = 20  # twenty SIGKILLs at random moments: enough to land in every phase of a group commit
DEVICES = 20
ALARM_DEVICES = (1, 2, 3, 4)  # these toggle alarm on and off: raised/cleared transitions and notifications
# A 2xx answered this long before a SIGKILL may legitimately be resent (its outcome was not yet committed).
CRASH_WINDOW_S = 1.0
# ... or while its request was on the way: sent, not yet answered.
IN_FLIGHT_S = 0.25


class Load(threading.Thread):
    """Readings from every device at a steady rate; alarm devices alternate 1.2 s in alarm, 2 s quiet."""

    def __init__(self, publisher: Publisher, *, rate: float = 300.0) -> None:
        super().__init__(daemon=True, name="load")
        self.publisher = publisher
        self.rate = rate
        self.stop_event = threading.Event()
        self.published = 0
        self.base_ms = int(time.time() * 1000) - 120_000

    def run(self) -> None:
        seq = 0
        started = time.monotonic()
        while not self.stop_event.is_set():
            for d in range(DEVICES):
                elapsed = time.monotonic() - started
                alarm = d in ALARM_DEVICES and (elapsed + d * 0.4) % 3.2 < 1.2
                payload = {"ts": self.base_ms + seq * 5, "seq": seq, "obscuration": 0.2, "alarm": alarm}
                self.publisher.publish(f"firegrid/b{d % 10:02d}/d{d:03d}/telemetry", json.dumps(payload))
                self.published += 1
            seq += 1
            # pace: DEVICES messages per step
            delay = started + self.published / self.rate - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)


def test_gateway_sigkilled_repeatedly(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> None:
    rng = random.Random(int(time.time()))
    hook = WebhookCounter(WEBHOOK_SECRET, delay_s=0.02).start()
    config, port = stack_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=influx.url,
        webhook_url=hook.url,
        devices=DEVICES,
        rules=FAST_RULES,
    )
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port, client_id="rel-crash-pub")
    load = Load(publisher)
    kills: list[float] = []
    try:
        load.start()
        wait_until(lambda: hook.of_type("alert.raised"), timeout=20, what="the first alarm notification")
        for _ in range(KILLS):
            # a random moment: mid-commit, mid-delivery, mid-Influx write, whatever is going on
            time.sleep(rng.uniform(0.1, 1.0))  # the moment IS the variable here, not a wait for an event
            gateway.kill()
            kills.append(time.monotonic())
            gateway.start()
        time.sleep(rng.uniform(1.0, 2.0))  # let transitions flow after the last restart too
        load.stop_event.set()
        load.join(10)
        publisher.wait_acked()
        total = load.published

        # no reading lost (the publisher's readings are distinct points: device + timestamp)
        wait_until(
            lambda: influx.count("smoke", "obscuration") >= total, timeout=60, what=f"{total} readings in InfluxDB"
        )
        assert influx.count("smoke", "obscuration") == total

        # every alarm device raised exactly one alert (it toggles, is never resolved: one open alert per key)
        rows = alerts_rows(db)
        keys = Counter(r["key"] for r in rows)
        assert set(keys) == {f"smoke-alarm/b{d % 10:02d}/d{d:03d}" for d in ALARM_DEVICES}, keys
        assert all(n == 1 for n in keys.values()), f"an alert was raised twice: {keys}"
        status, body = gateway.get("/api/v1/alerts?limit=100", token="test-admin")
        assert status == 200, body
        listed = Counter(item["key"] for item in json.loads(body)["items"])
        assert listed == keys, listed

        # nothing lost: every outbox row is delivered and its id reached the receiver
        def settled() -> bool:
            return all(r["state"] == "sent" for r in outbox_rows(db))

        wait_until(settled, timeout=30, what="every notification delivered")
        outbox = outbox_rows(db)
        hits = hook.snapshot()
        accepted = [h for h in hits if 200 <= h.status < 300]
        assert all(h.signature_ok for h in hits), "a webhook with an invalid signature"
        assert {r["msg_id"] for r in outbox} <= {h.msg_id for h in accepted}
        assert {h.msg_id for h in accepted} <= {r["msg_id"] for r in outbox}, "a webhook id the outbox never had"

        # no acknowledged notification sent twice, except in the unavoidable crash window (same id)
        first_accept: dict[str, float] = {}
        repeats: list[str] = []
        for hit in sorted(accepted, key=lambda h: h.at):
            if hit.msg_id not in first_accept:
                first_accept[hit.msg_id] = hit.at
                continue
            first = first_accept[hit.msg_id]
            # The window opens while the request is in flight: a kill just before the receiver answered (it holds
            # every 2xx for delay_s) leaves the gateway without the answer the receiver believes it gave.
            if not any(first - hook.delay_s - IN_FLIGHT_S <= k <= first + CRASH_WINDOW_S for k in kills):
                repeats.append(f"{hit.msg_id} ({hit.type}) accepted at {first:.3f} and again at {hit.at:.3f}")
        assert not repeats, f"acknowledged notifications sent twice (kills at {kills}): {repeats}"

        # one alert.raised notification per alert
        raised = Counter(h.data.get("id") or h.data.get("alert_id") for h in accepted if h.type == "alert.raised")
        raised_ids = Counter(
            (h.data.get("id") or h.data.get("alert_id"), h.msg_id) for h in accepted if h.type == "alert.raised"
        )
        assert len(raised) == len(keys), raised
        assert all(len({mid for (aid, mid) in raised_ids if aid == alert}) == 1 for alert in raised), (
            "an alert.raised notification with two different ids"
        )
        assert gateway.get("/healthz")[0] == 200
    finally:
        load.stop_event.set()
        publisher.close()
        gateway.stop()
        hook.stop()
