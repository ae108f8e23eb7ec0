"""The gateway end to end with the rules engine and the alert store: a fire alarm over MQTT is persisted (with its
outbox rows) before the message is acknowledged, written to InfluxDB as measurement ``alert``, and a SIGKILL +
restart neither forgets the open alarm nor raises it a second time."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from testkit.gateway import Gateway, Publisher, wait_for, write_config
from testkit.services import InfluxServer, MosquittoServer


def _alerts(db: Path, key_like: str) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT key, state, open FROM alerts WHERE key LIKE ? ORDER BY id", (key_like,)).fetchall()


def test_alarm_survives_sigkill_without_being_raised_twice(
    tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer
) -> None:
    config, port = write_config(tmp_path, mqtt_url=mosquitto.url, influx_url=influx.url, devices=20)
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port)
    topic = "firegrid/b03/d003/telemetry"

    def alarm(seq: int) -> bytes:
        return json.dumps({"ts": int(time.time() * 1000), "seq": seq, "obscuration": 0.5, "alarm": True}).encode()

    try:
        # background telemetry from the other devices, then the alarm
        for i in range(2000):
            d = i % 20
            if d == 3:
                continue
            publisher.publish(
                f"firegrid/b{d % 10:02d}/d{d:03d}/telemetry",
                json.dumps({"ts": int(time.time() * 1000) - 10_000 + i, "obscuration": 0.2}),
            )
        publisher.publish(topic, alarm(1))
        publisher.wait_acked()
        rows = wait_for(lambda: _alerts(db, "%smoke-detector-alarm%d003%"), timeout=20, what="the alarm in the store")
        assert len(rows) == 1 and rows[0][1] == "raised" and rows[0][2] == 1
        wait_for(
            lambda: influx.count("alert", "reason", where="rule = 'smoke-detector-alarm'") == 1,
            timeout=20,
            what="the alert point in InfluxDB",
        )
        # the engine state is on disk with the acknowledgement: kill, restart, the detector is still in alarm
        gateway.kill()
        gateway.start()
        publisher.publish(topic, alarm(2))
        publisher.publish(topic, alarm(3))
        publisher.wait_acked()
        wait_for(lambda: gateway.metric("firegrid_readings_total") >= 2, timeout=20, what="the new readings processed")
        rows = _alerts(db, "%smoke-detector-alarm%d003%")
        assert len(rows) == 1, rows  # not raised a second time
        assert rows[0][2] == 1  # and not forgotten: still open
        raised = influx.rows("SELECT transition FROM alert WHERE rule = 'smoke-detector-alarm'")
        assert [r["transition"] for r in raised].count("raised") == 1
        assert "1 active alerts seeded" in gateway.log_tail(400)
    finally:
        publisher.close()
        gateway.stop()
