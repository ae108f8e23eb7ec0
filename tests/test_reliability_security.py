"""Webhook destinations and secrets, end to end through ``firegrid run``.

Already covered elsewhere: ACL spoofing and MQTT TLS client certificates (tests/test_acl.py, tests/test_deploy.py);
API roles and scopes (tests/test_api_*.py); the private-URL check at config time for plain literals and at send time
for 127.0.0.1 (tests/test_alerts_config.py, tests/test_alerts_delivery.py).  Added here:

* loopback written the ways an attacker writes it (decimal, hex, octal, short form, IPv4-mapped IPv6, trailing dot,
  ``0.0.0.0``): refused by the config or at send time, and a real receiver on 127.0.0.1 behind those URLs gets
  nothing, while an explicitly allowed endpoint on the same receiver does get the alarm;
* a canary secret in EVERY secret field of a config (MQTT password, InfluxDB token and password, webhook,
  governance and SMS secrets, API tokens, ACL secrets): the gateway runs with debug logs, raises and delivers an
  alarm, fails against unreachable endpoints, and answers every API route and error path; the canary appears in no
  log line, no API response, no metric, and not in ``firegrid check-config`` output, even for an invalid config.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from alerts.config import NotifyConfig
from testkit.faults import WEBHOOK_SECRET, stack_config, wait_until
from testkit.gateway import Gateway, Publisher, store_rows
from testkit.services import InfluxServer, MosquittoServer, free_port
from testkit.webhooks import WebhookCounter

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent


def _outbox(db: Path) -> list[dict[str, Any]]:
    return store_rows(db, "SELECT target, state, last_error FROM outbox WHERE channel='webhook'")


def test_loopback_in_disguise_is_refused(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    hook = WebhookCounter(WEBHOOK_SECRET, path="/hook").start()
    port = hook.url.rsplit(":", 1)[1].split("/")[0]
    disguised = [
        f"http://2130706433:{port}/hook",  # decimal
        f"http://0x7f000001:{port}/hook",  # hex
        f"http://0177.0.0.1:{port}/hook",  # octal
        f"http://127.1:{port}/hook",  # short form
        f"http://localhost.:{port}/hook",  # trailing dot
        f"http://LocalHost:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",  # IPv4-mapped IPv6
        f"http://0.0.0.0:{port}/hook",
        f"http://[::1]:{port}/hook",
    ]
    survivors = []
    for url in disguised:
        try:
            NotifyConfig.model_validate({"webhooks": [{"url": url, "secret": WEBHOOK_SECRET}]})
        except ValidationError as exc:
            assert "allow_private" in str(exc)
        else:
            survivors.append(url)  # not recognisable without a lookup: the send-time check must catch it
    allowed = hook.url  # the same receiver, explicitly allowed: proves the alarm WOULD have been delivered
    config, http_port = stack_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=None,
        extra={
            "notify": {
                "webhooks": [{"url": url, "secret": WEBHOOK_SECRET, "events": ["alert.raised"]} for url in survivors]
                + [{"url": allowed, "secret": WEBHOOK_SECRET, "allow_private": True, "events": ["alert.raised"]}],
                "retry": {"base_s": 0.1, "max_s": 1.0},
            }
        },
    )
    gateway = Gateway(config, http_port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port, client_id="rel-ssrf-pub")
    try:
        publisher.publish("firegrid/b03/d003/telemetry", json.dumps({"alarm": True, "obscuration": 0.5}))
        publisher.wait_acked()
        wait_until(lambda: hook.of_type("alert.raised"), timeout=20, what="the allowed endpoint to get the alarm")
        db = tmp_path / "firegrid.sqlite"
        wait_until(
            lambda: len([r for r in _outbox(db) if r["state"] != "pending"]) == len(survivors) + 1,
            timeout=20,
            what="every endpoint judged",
        )
        rows = {r["target"]: r for r in _outbox(db)}
        for url in survivors:
            assert rows[url]["state"] == "failed", rows[url]
            assert "private" in (rows[url]["last_error"] or "") or "refused" in (rows[url]["last_error"] or "")
        assert len(hook.snapshot()) == 1, [h.msg_id for h in hook.snapshot()]  # only the allowed one arrived
    finally:
        publisher.close()
        gateway.stop()
        hook.stop()


CANARY = "canary-7f3e9b1c5d2a"
CANARY_WHSEC = "whsec_" + base64.b64encode(f"{CANARY}-webhook-key!".encode()).decode()
CANARY_GOV = "whsec_" + base64.b64encode(f"{CANARY}-governance-key".encode()).decode()
CANARY_INBOUND = "whsec_" + base64.b64encode(f"{CANARY}-inbound-sms-key".encode()).decode()
CANARY_RECEIPT = "whsec_" + base64.b64encode(f"{CANARY}-voice-receipts".encode()).decode()
NEEDLES = (CANARY, CANARY_WHSEC[6:], CANARY_GOV[6:], CANARY_INBOUND[6:], CANARY_RECEIPT[6:])


def _leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


def test_secrets_never_leak(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> None:
    hook = WebhookCounter(CANARY_WHSEC).start()
    hook.script = [500]  # one failure first: the retry path logs too
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    robot_at = {"endpoint": dead, "allow_private": True, "timeout_s": 1}
    viewer = f"{CANARY}-viewer-token"
    admin = f"{CANARY}-admin-token"
    config, port = stack_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=influx.url,
        extra={
            "mqtt": {"username": "firegrid", "password": f"{CANARY}-mqtt"},
            "influx": {"token": f"{CANARY}-influx-token", "username": "firegrid", "password": f"{CANARY}-influx"},
            "http": {
                "tokens": [
                    {"name": "viewer", "token": viewer, "role": "viewer"},
                    {"name": "admin", "token": admin, "role": "admin"},
                ]
            },
            "acl": {"device_secret": f"{CANARY}-acl", "simulator_username": "sim", "simulator_password": CANARY},
            "log": {"level": "debug", "format": "json"},
            "notify": {
                "roster": [{"name": "w", "phone": "+8613800000001", "role": "grid_worker"}],
                # The group robots on the first rung, a voice call on the second (after a 1 s ack timeout).
                "ack_timeout_s": 1,
                "routes": [
                    {
                        "name": "fire",
                        "min_severity": "fire",
                        "tiers": [
                            {"roles": ["grid_worker"], "robots": ["wecom", "dingtalk", "feishu"]},
                            {"roles": ["grid_worker"], "voice": True},
                        ],
                    }
                ],
                "robots": [
                    {"name": "wecom", "platform": "wecom", "key": f"{CANARY}-wecom-key"} | robot_at,
                    {"name": "dingtalk", "platform": "dingtalk", "key": f"{CANARY}-dt-token"}
                    | {"secret": f"SEC{CANARY}-dt"}
                    | robot_at,
                    {"name": "feishu", "platform": "feishu", "key": f"{CANARY}-feishu-hook"}
                    | {"secret": f"{CANARY}-feishu"}
                    | robot_at,
                ],
                "voice": {
                    "provider": "tencent",
                    "endpoint": f"{dead}/voice",
                    "allow_private": True,
                    "timeout_s": 1,
                    "secret_id": "AKIDcanary",
                    "secret_key": f"{CANARY}-tencent-voice",
                    "sdk_app_id": "1400000009",
                    "receipt_secret": CANARY_RECEIPT,
                },
                "links": {"base_url": "https://fire.example.cn", "secret": f"{CANARY}-links-secret"},
                "webhooks": [
                    {"url": hook.url, "secret": CANARY_WHSEC, "allow_private": True, "timeout_s": 2},
                    {"url": f"{dead}/hook", "secret": CANARY_WHSEC, "allow_private": True, "timeout_s": 1},
                ],
                "governance": {"url": f"{dead}/gov", "secret": CANARY_GOV, "allow_private": True, "timeout_s": 1},
                "sms": {
                    "provider": "aliyun",
                    "endpoint": f"{dead}/sms",
                    "allow_private": True,
                    "timeout_s": 1,
                    "access_key_id": "LTAIcanaryid",
                    "access_key_secret": f"{CANARY}-aliyun",
                    "sign_name": "test",
                    "inbound_secret": CANARY_INBOUND,
                    "templates": {"zh": {"template_id": "SMS_1", "text": "{building}{location}{severity}{code}"}},
                },
                "retry": {"base_s": 0.1, "max_s": 0.5},
            },
        },
    )
    assert CANARY in config.read_text()  # the canary really is in the file
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port, client_id="rel-canary-pub")
    responses: list[str] = []

    def call(method: str, path: str, *, token: str | None = admin, body: bytes | None = None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, text = response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode(errors="replace")
            text += json.dumps(dict(exc.headers))
        responses.append(f"{method} {path} -> {status}: {text}")
        return status, text

    try:
        publisher.publish("firegrid/b03/d003/telemetry", json.dumps({"alarm": True, "obscuration": 0.5}))
        publisher.publish("firegrid/b03/d003/telemetry", b'{"obscuration": NaN}')
        publisher.wait_acked()
        wait_until(lambda: hook.of_type("alert.raised"), timeout=20, what="the alarm webhook (after one 500)")
        db = tmp_path / "firegrid.sqlite"

        def failing() -> bool:
            rows = store_rows(db, "SELECT channel, attempts FROM outbox WHERE last_error IS NOT NULL")
            return {"webhook", "governance", "sms", "robot", "voice"} <= {
                r["channel"] for r in rows if r["attempts"] >= 2
            }

        wait_until(
            failing,
            timeout=20,
            what="the unreachable webhook, governance, SMS, robot and voice endpoints to fail twice",
        )
        status, body = call("GET", "/api/v1/alerts")
        assert status == 200, body
        alert_id = json.loads(body)["items"][0]["id"]
        for path in (
            "/api/v1/alerts",
            f"/api/v1/alerts/{alert_id}",
            "/api/v1/incidents",
            "/api/v1/devices",
            "/api/v1/devices/d003",
            "/api/v1/buildings",
            "/api/v1/buildings/b03",
            "/api/v1/rejections",
            "/api/v1/maintenance",
            "/api/v1/whoami",
            "/openapi.json",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/alerts/999999",
            "/api/v1/nope",
        ):
            call("GET", path)
        call("GET", "/api/v1/whoami", token=viewer)
        call("GET", "/api/v1/alerts", token=f"{CANARY}-wrong-token")
        call("GET", "/api/v1/alerts", token=None)
        call("POST", f"/api/v1/alerts/{alert_id}/ack", token=viewer, body=b"{}")  # forbidden role
        call("POST", f"/api/v1/alerts/{alert_id}/ack", body=b"{not json")
        call("POST", f"/api/v1/alerts/{alert_id}/ack", body=json.dumps({"note": CANARY[:5]}).encode())
        call("POST", "/api/v1/sms/inbound", token=None, body=b'{"from": "+8613800000001", "text": "123"}')
        call("POST", "/api/v1/maintenance", body=b'{"building": "b03"}')
        call("POST", "/api/v1/voice/receipts", token=None, body=b'[{"out_id": "1", "dtmf": "1"}]')
        call("GET", "/l/garbage.link", token=None)
        call("POST", "/l/garbage.link", token=None, body=b"action=ack")
        wait_until(lambda: gateway.get("/healthz")[0] == 200, timeout=5, what="healthz")
    finally:
        publisher.close()
        code = gateway.stop()
        hook.stop()
    assert code == 0, gateway.log_tail()
    log = (tmp_path / "gateway.log").read_text(errors="replace")
    assert "debug" in log  # debug logging really was on
    leaks = [(line[:300], _leaks(line)) for line in log.splitlines() if _leaks(line)]
    assert not leaks, f"secrets in the log: {leaks[:5]}"
    leaks = [(r[:300], _leaks(r)) for r in responses if _leaks(r.replace(f"{CANARY}-wrong-token", ""))]
    assert not leaks, f"secrets in API responses: {leaks[:5]}"

    # check-config: valid, and invalid (a malformed webhook secret and a bad token elsewhere) with secrets in it
    env = dict(os.environ, FIREGRID_INFLUX__TOKEN=f"{CANARY}-from-env")
    ok = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "check-config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    data = yaml.safe_load(config.read_text())
    data["notify"]["webhooks"][0]["secret"] = f"{CANARY}-not-a-whsec"
    data["notify"]["sms"]["access_key_secret"] = {"nested": CANARY}
    data["mqtt"]["password"] = 12345
    data["http"]["tokens"][0]["token"] = [CANARY]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data, allow_unicode=True))
    bad = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "check-config", str(broken)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert bad.returncode != 0, bad.stdout + bad.stderr
    for result in (ok, bad):
        output = result.stdout + result.stderr
        assert not _leaks(output), f"check-config prints a secret:\n{output}"
    assert "secret" in bad.stdout + bad.stderr  # ... while still naming the field that is wrong
