"""Every rejection reason end to end: payload in over MQTT -> counted in /metrics by reason -> listed by the API
(latest 1000) -> logged at most once per device per minute; and the pipeline keeps going."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.ingest.contract import Reason
from testkit.gateway import Gateway, Publisher, wait_for, write_config
from testkit.services import InfluxServer, MosquittoServer

P = "firegrid"


def _cases() -> list[tuple[Reason, str, bytes]]:
    now = int(time.time() * 1000)
    ok = {"ts": now, "obscuration": 1.0}
    telemetry = f"{P}/b00/d000/telemetry"
    return [
        (Reason.BAD_TOPIC, f"{P}/b00/bad.id/telemetry", json.dumps(ok).encode()),
        (Reason.OVERSIZE, telemetry, b'{"obscuration": 1, "fault": "' + b"x" * 70_000 + b'"}'),
        (Reason.NOT_UTF8, telemetry, b'{"obscuration": 1, "fault": "\xff\xfe"}'),
        (Reason.NOT_JSON, telemetry, b'{"obscuration": 1,'),
        (Reason.WRONG_SHAPE, telemetry, b'"just a string"'),
        (Reason.TOO_MANY, telemetry, json.dumps([{"obscuration": 1.0}] * 1001).encode()),
        (Reason.WRONG_TYPE, telemetry, b'{"obscuration": "3"}'),
        (Reason.OUT_OF_RANGE, telemetry, b'{"obscuration": 500}'),
        (Reason.NON_FINITE, telemetry, b'{"obscuration": NaN}'),
        (Reason.UNKNOWN_METRIC, telemetry, b'{"celsius": 20}'),
        (Reason.UNKNOWN_EVENT, f"{P}/b00/d000/event", b'{"type": "explode"}'),
        (Reason.BAD_TIMESTAMP, telemetry, b'{"ts": "yesterday", "obscuration": 1}'),
        (Reason.STALE, telemetry, b'{"ts": 1000, "obscuration": 1}'),
        (Reason.UNKNOWN_DEVICE, f"{P}/b00/zz9/telemetry", b'{"obscuration": 1}'),
        (Reason.SPOOFED_ID, telemetry, json.dumps({**ok, "device": "d001"}).encode()),
        (Reason.WRONG_BUILDING, f"{P}/b05/d000/telemetry", json.dumps(ok).encode()),
        # the first copy is accepted, the second one is the replay
        (Reason.DUPLICATE, f"{P}/b01/d001/telemetry", json.dumps({**ok, "seq": 7}).encode()),
        (Reason.DUPLICATE, f"{P}/b01/d001/telemetry", json.dumps({**ok, "seq": 7}).encode()),
    ]


# foreign_building needs a gateway that owns part of a district: end to end in tests/test_gateway_partition.py
# The reasons of the other sources cannot come over MQTT: end to end in tests/test_uitd_listener.py (framing,
# unknown_panel, unmapped_point, too_many_connections) and tests/test_http_ingest.py (bad_signature, unmapped_device).
OTHER_SOURCES = {
    Reason.NO_START,
    Reason.TRUNCATED,
    Reason.BAD_LENGTH,
    Reason.OVERSIZED,
    Reason.BAD_END,
    Reason.BAD_CHECKSUM,
    Reason.UNKNOWN_PANEL,
    Reason.UNMAPPED_POINT,
    Reason.TOO_MANY_CONNECTIONS,
    Reason.BAD_SIGNATURE,
    Reason.UNMAPPED_DEVICE,
}
EXPECTED = set(Reason) - {Reason.FOREIGN_BUILDING} - OTHER_SOURCES


def test_every_rejection_reason_end_to_end(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> None:
    config, port = write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=influx.url,
        devices=20,
        extra={"contract": {"allow_unregistered": True}},
    )
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port)
    cases = _cases()
    try:
        for _reason, topic, payload in cases:
            publisher.publish(topic, payload)
        # then a genuine reading: the pipeline must still be running after all that
        publisher.publish(f"{P}/b02/d002/telemetry", json.dumps({"ts": int(time.time() * 1000), "obscuration": 2.5}))
        publisher.wait_acked()
        wait_for(
            lambda: influx.count("smoke", "obscuration", where="device = 'd002'") == 1,
            timeout=20,
            what="the genuine reading in InfluxDB",
        )
        reasons = {reason for reason, _, _ in cases}
        assert reasons == EXPECTED, f"untested reasons: {EXPECTED - reasons}"
        for reason in EXPECTED:
            assert gateway.metric("firegrid_rejections_total", reason=reason.value) == 1, reason
        # one accepted copy of the duplicate, plus the genuine reading
        assert influx.count("smoke", "obscuration", where="device = 'd001'") == 1

        status, body = gateway.get("/api/v1/rejections", token="test-admin")
        assert status == 200, body
        listed = {item["reason"] for item in json.loads(body)["items"]}
        assert listed == {r.value for r in EXPECTED}

        # d000 sent 13 bad messages; the log names it once (at most once per device per minute)
        lines = [json.loads(line) for line in gateway.log_tail(500).splitlines() if line.startswith("{")]
        about_d000 = [
            line for line in lines if line["logger"] == "firegrid.rejections" and line.get("device") == "d000"
        ]
        assert len(about_d000) == 1, about_d000
    finally:
        publisher.close()
        assert gateway.stop() == 0, gateway.log_tail()
