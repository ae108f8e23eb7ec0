"""HTTP ingest into ``firegrid run`` (real Mosquitto and InfluxDB): plain pushes with an ``ingest`` token, OneNET's
URL verification and signed data push, CTWing (AEP) subscription pushes.  Each answer comes after the group commit."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testkit.gateway import Gateway, store_rows, wait_for, write_config
from testkit.services import InfluxServer, MosquittoServer

pytestmark = pytest.mark.timeout(180)

ADMIN = "test-admin"
INGEST = "vendor-gw-token"
ONENET_TOKEN = "onenet-push-token"
CTWING_TOKEN = "ctwing-shared-token"


def _config(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> tuple[Path, int]:
    return write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=influx.url,
        devices=6,
        buildings=2,
        extra={
            "http": {
                "tokens": [
                    {"name": "t", "token": ADMIN, "role": "admin"},
                    {"name": "vendor", "token": INGEST, "role": "ingest", "buildings": ["b00"]},
                    {"name": "reader", "token": "viewer-token", "role": "viewer"},
                ]
            },
            "ingest": {
                "onenet": {
                    "token": ONENET_TOKEN,
                    "devices": [{"id": "586024918", "device": "d001"}, {"id": "868334030000001", "device": "d003"}],
                },
                "ctwing": {"token": CTWING_TOKEN, "devices": [{"id": "b6c3a1d2e0f94c1a", "device": "d005"}]},
            },
        },
    )


def _request(
    gateway: Gateway, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.http_port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _alerts(db: Path, device: str) -> list[dict[str, Any]]:
    return store_rows(db, "SELECT rule, severity, building, floor, drill FROM alerts WHERE device = ?", (device,))


def _sign(nonce: str, msg: str, token: str = ONENET_TOKEN) -> str:
    return base64.b64encode(hashlib.md5((token + nonce + msg).encode()).digest()).decode()


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> Any:
    config, port = _config(tmp_path, mosquitto, influx)
    running = Gateway(config, port, tmp_path / "gateway.log").start()
    yield running
    running.stop()


def test_plain_push_with_an_ingest_token_is_committed_before_the_answer(gateway: Gateway, tmp_path: Path) -> None:
    db = tmp_path / "firegrid.sqlite"
    body = json.dumps({"ts": int(time.time() * 1000), "seq": 1, "alarm": True, "obscuration": 4.2}).encode()
    auth = {"Authorization": f"Bearer {INGEST}", "Content-Type": "application/json"}
    status, answer = _request(gateway, "POST", "/api/v1/ingest/b00/d000/telemetry", body, auth)
    assert (status, json.loads(answer)) == (200, {"accepted": 1})
    # durable before the answer
    assert [a["rule"] for a in _alerts(db, "d000")] == ["smoke-detector-alarm"]
    # the same contract as MQTT: a bad payload is 422 with the contract's reason, counted and listed
    status, answer = _request(gateway, "POST", "/api/v1/ingest/b00/d000/telemetry", b'{"celsius": 20}', auth)
    assert status == 422 and json.loads(answer)["reason"] == "unknown_metric"
    status, listed = gateway.get("/api/v1/rejections?reason=unknown_metric", token=ADMIN)
    assert len(json.loads(listed)["items"]) == 1
    # the same dedup: the same seq and values again is accepted but judged a duplicate
    status, answer = _request(gateway, "POST", "/api/v1/ingest/b00/d000/telemetry", body, auth)
    assert status == 200
    assert gateway.metric("firegrid_rejections_total", reason="duplicate") == 1
    # status counts as presence
    status, _ = _request(gateway, "POST", "/api/v1/ingest/b00/d000/status", b"offline", auth)
    assert status == 200
    wait_for(
        lambda: json.loads(gateway.get("/api/v1/devices/d000", token=ADMIN)[1]).get("status") == "offline",
        timeout=10,
        what="d000 offline",
    )
    # a drill pushed over HTTP is a drill alert
    drill = json.dumps({"seq": 2, "alarm": True, "drill": True}).encode()
    assert _request(gateway, "POST", "/api/v1/ingest/b00/d002/telemetry", drill, auth)[0] == 200
    assert [a["drill"] for a in _alerts(db, "d002")] == [1]


def test_plain_push_refuses_other_tokens_and_buildings(gateway: Gateway) -> None:
    body = b'{"alarm": false}'
    for headers, expected in (
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Bearer viewer-token"}, 403),  # a viewer cannot push
        ({"Authorization": f"Bearer {INGEST}"}, 200),
    ):
        assert _request(gateway, "POST", "/api/v1/ingest/b00/d000/telemetry", body, headers)[0] == expected
    # the ingest token is limited to b00, and reads nothing
    headers = {"Authorization": f"Bearer {INGEST}"}
    assert _request(gateway, "POST", "/api/v1/ingest/b01/d001/telemetry", body, headers)[0] == 403
    assert gateway.get("/api/v1/alerts", token=INGEST)[0] == 403
    assert gateway.metric("firegrid_rejections_total", reason="bad_signature") == 4


def test_onenet_verification_and_signed_push(gateway: Gateway, tmp_path: Path) -> None:
    db = tmp_path / "firegrid.sqlite"
    # URL verification: GET ?msg&nonce&signature, answered with msg when the signature is right
    msg, nonce = "Tz5Qx1", "abcDEF12"
    query = urllib.parse.urlencode({"msg": msg, "nonce": nonce, "signature": _sign(nonce, msg)})
    assert _request(gateway, "GET", f"/api/v1/ingest/onenet?{query}") == (200, msg.encode())
    query = urllib.parse.urlencode({"msg": msg, "nonce": nonce, "signature": _sign(nonce, msg, "other")})
    assert _request(gateway, "GET", f"/api/v1/ingest/onenet?{query}")[0] == 403

    now = int(time.time() * 1000)
    # a push with a bad signature is refused and raises nothing
    msg_text = json.dumps({"type": 1, "dev_id": 586024918, "ds_id": "alarm", "at": now, "value": 1})
    forged = f'{{"msg": {msg_text}, "msg_signature": "{_sign("n1", msg_text, "guess")}", "nonce": "n1"}}'
    assert _request(gateway, "POST", "/api/v1/ingest/onenet", forged.encode())[0] == 403
    unsigned = f'{{"msg": {msg_text}, "nonce": "n1"}}'
    assert _request(gateway, "POST", "/api/v1/ingest/onenet", unsigned.encode())[0] == 401
    assert _alerts(db, "d001") == []
    assert gateway.metric("firegrid_rejections_total", reason="bad_signature") == 3

    # the signed push of a smoke alarm (by dev_id) raises a fire alert before the answer
    body = f'{{"msg":{msg_text},"msg_signature":"{_sign("n2", msg_text)}","nonce":"n2"}}'
    status, answer = _request(gateway, "POST", "/api/v1/ingest/onenet", body.encode())
    assert status == 200, answer
    assert json.loads(answer)["accepted"] == 1
    assert [(a["rule"], a["severity"]) for a in _alerts(db, "d001")] == [("smoke-detector-alarm", 4)]

    # the envelope with msg as a string of JSON, signed as that string
    text = json.dumps({"type": 1, "dev_id": 586024918, "ds_id": "battery", "at": now + 1, "value": 64})
    envelope = json.dumps({"msg": text, "signature": _sign("n4", text), "nonce": "n4", "time": now, "id": "x1"})
    status, answer = _request(gateway, "POST", "/api/v1/ingest/onenet", envelope.encode())
    assert status == 200 and json.loads(answer)["accepted"] == 1, answer
    forged = json.dumps({"msg": text, "signature": _sign("n4", text + " "), "nonce": "n4"})
    assert _request(gateway, "POST", "/api/v1/ingest/onenet", forged.encode())[0] == 403
    assert gateway.metric("firegrid_rejections_total", reason="bad_signature") == 4

    # an NB-IoT device named by IMEI; a batch with an online report and an unmapped device
    batch = json.dumps(
        [
            {"type": 2, "dev_id": 1, "imei": "868334030000001", "status": 1, "login_type": 10, "at": now},
            # (a status is stamped at its receipt; a value older than the device's last sign of life is not its last)
            {"type": 1, "dev_id": 2, "imei": "868334030000001", "ds_id": "battery", "at": now + 60_000, "value": "87"},
            {"type": 1, "dev_id": 999, "ds_id": "alarm", "at": now, "value": 1},
        ],
        separators=(",", ":"),
    )
    body = f'{{"msg":{batch},"msg_signature":"{_sign("n3", batch)}","nonce":"n3"}}'
    status, answer = _request(gateway, "POST", "/api/v1/ingest/onenet", body.encode())
    result = json.loads(answer)
    assert status == 200 and result["accepted"] == 2
    assert [r["reason"] for r in result["rejected"]] == ["unmapped_device"]
    assert gateway.metric("firegrid_rejections_total", reason="unmapped_device") == 1
    wait_for(
        lambda: json.loads(gateway.get("/api/v1/devices/d003", token=ADMIN)[1]).get("battery") == 87,
        timeout=10,
        what="d003's battery from the IMEI-named data point",
    )
    assert json.loads(gateway.get("/api/v1/devices/d003", token=ADMIN)[1])["status"] == "online"


def test_ctwing_data_report_lands_in_influxdb(gateway: Gateway, influx: InfluxServer, tmp_path: Path) -> None:
    db = tmp_path / "firegrid.sqlite"
    now = int(time.time() * 1000)
    report = {
        "upPacketSN": -1,
        "upDataSN": -1,
        "topic": "v1/up/ad",
        "timestamp": now,
        "tenantId": "2000012345",
        "serviceId": "",
        "protocol": "lwm2m",
        "productId": "15012345",
        "messageType": "dataReport",
        "deviceId": "b6c3a1d2e0f94c1a",
        "IMEI": "869975030000002",
        "payload": {"serviceData": {"smoke_state": 0, "battery_value": 76}},
    }
    path = f"/api/v1/ingest/ctwing?token={CTWING_TOKEN}"
    assert _request(gateway, "POST", "/api/v1/ingest/ctwing", json.dumps(report).encode())[0] == 401
    assert _request(gateway, "POST", "/api/v1/ingest/ctwing?token=nope", json.dumps(report).encode())[0] == 403
    status, answer = _request(gateway, "POST", path, json.dumps(report).encode())
    assert status == 200 and json.loads(answer)["accepted"] == 1, answer
    wait_for(
        lambda: influx.count("smoke", "battery", where="device = 'd005'") == 1,
        timeout=20,
        what="the CTWing reading in InfluxDB",
    )
    # an event report of a smoke alarm raises a fire alert; offline counts as status
    event = {**report, "messageType": "eventReport", "eventType": 1, "eventContent": {"smoke_state": 1}}
    del event["payload"]
    assert _request(gateway, "POST", path, json.dumps(event).encode())[0] == 200
    assert [a["rule"] for a in _alerts(db, "d005")] == ["smoke-detector-alarm"]
    offline = {"timestamp": now, "tenantId": "2000012345", "productId": "15012345"}
    offline |= {"messageType": "deviceOnlineOfflineReport", "eventType": 0, "deviceId": "b6c3a1d2e0f94c1a"}
    headers = {"X-Firegrid-Token": CTWING_TOKEN}
    assert _request(gateway, "POST", "/api/v1/ingest/ctwing", json.dumps(offline).encode(), headers)[0] == 200
    wait_for(
        lambda: json.loads(gateway.get("/api/v1/devices/d005", token=ADMIN)[1]).get("status") == "offline",
        timeout=10,
        what="d005 offline",
    )


def test_ingest_endpoints_are_in_the_openapi_document_and_answer_as_documented(gateway: Gateway) -> None:
    """The ingest endpoints are documented in the running gateway's /openapi.json (and /docs), and schemathesis,
    reading that document, finds every answer (status, content type, body) as documented and no server error."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    base = f"http://127.0.0.1:{gateway.http_port}"
    document = requests.get(base + "/openapi.json", timeout=10).json()
    ops = {(path, method) for path, item in document["paths"].items() for method in item}
    assert {
        ("/api/v1/ingest/onenet", "get"),
        ("/api/v1/ingest/onenet", "post"),
        ("/api/v1/ingest/ctwing", "post"),
        ("/api/v1/ingest/{building}/{device}/{channel}", "post"),
    } <= ops
    plain = document["paths"]["/api/v1/ingest/{building}/{device}/{channel}"]["post"]
    assert plain["x-firegrid-role"] == "ingest" and set(plain["responses"]) >= {"200", "401", "403", "422", "503"}
    assert document["paths"]["/api/v1/ingest/onenet"]["get"]["security"] == []  # the signature authenticates
    assert {"IngestAccepted", "IngestPlatformAccepted", "IngestError", "OneNetPush"} <= set(
        document["components"]["schemas"]
    )
    assert {"name": "ingest"} in document["tags"]
    # the framework's operations are all still there
    assert ("/api/v1/alerts", "get") in ops and ("/api/v1/incidents/{id}/dispatch", "post") in ops
    docs = requests.get(base + "/docs", timeout=10)
    assert docs.status_code == 200 and "/api/v1/ingest/{building}/{device}/{channel}" in docs.text

    schema = schemathesis.openapi.from_dict(document).include(path_regex="^/api/v1/ingest/")
    session = requests.Session()
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        @settings(
            max_examples=8,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            headers = {"Authorization": f"Bearer {INGEST}"}
            case.call_and_validate(base_url=base, session=session, headers=headers, checks=checks)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
