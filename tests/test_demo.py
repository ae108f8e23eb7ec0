"""``firegrid demo`` as a user runs it: a subprocess, its URL line, a fire drill seen through the API, SIGTERM.

Everything is real: the embedded amqtt broker, the gateway service, the simulated community from
examples/community.yaml, the local webhook receiver.  Only the timings are shortened (first drill after 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.tools.demo import free_port, start_broker

ROOT = Path(__file__).resolve().parent.parent


class Demo:
    """The demo process with its output read on a thread, so waiting for a line never blocks on a full pipe."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("FIREGRID_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.tools.cli", "demo", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: str, *, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        for line in list(self.lines):
            if match := regex.search(line):
                return match
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            if match := regex.search(line):
                return match
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; output:\n" + "\n".join(self.lines))

    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    run = Demo(
        "--config",
        str(ROOT / "examples" / "community.yaml"),
        "--http-port",
        "0",
        "--mqtt-port",
        "0",
        "--first-drill",
        "1s",
        "--drill-every",
        "20s",
        "--dispatch-after",
        "2s",
        "--voice-after",
        "10s",
        "--data-dir",
        str(tmp_path / "data"),
        "--duration",
        "240",  # a backstop: the test stops it much earlier
    )
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=10)


def get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def items_of(page: Any) -> list[dict[str, Any]]:
    if isinstance(page, list):
        return page
    for key in ("items", "alerts", "data"):
        if isinstance(page.get(key), list):
            return page[key]
    raise AssertionError(f"unexpected alert page shape: {str(page)[:300]}")


def test_demo_runs_a_fire_drill_and_stops_cleanly(demo: Demo) -> None:
    url = demo.wait_for(r"dashboard:\s+(http://127\.0\.0\.1:\d+/)", timeout=60).group(1)
    viewer = demo.wait_for(r"viewer token:\s+(\S+)", timeout=5).group(1)
    operator = demo.wait_for(r"operator token:\s+(\S+)", timeout=5).group(1)
    receiver = demo.wait_for(r"deliveries: (http://127\.0\.0\.1:\d+/deliveries)", timeout=5).group(1)
    assert viewer != operator
    assert "local store only" in demo.output()  # no InfluxDB: the log says so

    # The dashboard is served, and the API answers the viewer token and refuses no token.
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200 and b"<html" in response.read().lower()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "api/v1/alerts", timeout=5)
    assert refused.value.code == 401
    # The QR page of an inspection point, as scanning its sticker opens it on a phone.
    qr = demo.wait_for(r"inspection page:\s+(http://127\.0\.0\.1:\d+/m/p/\S+)", timeout=5).group(1)
    with urllib.request.urlopen(qr, timeout=5) as response:
        assert response.status == 200 and "消防安全巡查" in response.read().decode()
    # a shop's self-inspection found a hazard; the receiver got its signed events
    demo.wait_for(r"webhook: hazard\.reported sc01\b", timeout=30)

    # The live stream the dashboard reads (SSE), watched from here on for the receiver's deliveries.
    stream_events: list[tuple[str, dict[str, Any]]] = []
    request = urllib.request.Request(url + "api/v1/stream", headers={"Authorization": f"Bearer {viewer}"})
    stream = urllib.request.urlopen(request, timeout=60)

    def read_stream() -> None:
        event = ""
        with contextlib.suppress(Exception):
            for raw in stream:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    stream_events.append((event, json.loads(line[6:])))

    threading.Thread(target=read_stream, daemon=True).start()

    # A fire drill appears through the API: a fire alert in the drilled building.
    drill = demo.wait_for(r"fire drill #1: simulated fire at (\S+) ", timeout=30)
    building = drill.group(1)
    deadline = time.monotonic() + 60
    fires: list[dict[str, Any]] = []
    while not fires:
        assert time.monotonic() < deadline, "no fire alert through the API within 60 s\n" + demo.output()
        assert demo.proc.poll() is None, demo.output()
        fires = [a for a in items_of(get(url + "api/v1/alerts?severity=fire", viewer)) if a.get("building") == building]
        if not fires:
            time.sleep(0.25)
    # ... and its notification reached the local webhook receiver (signature verified), shown on the console.
    demo.wait_for(rf"webhook: alert\.raised FIRE {building}\b", timeout=30)
    deliveries = json.loads(urllib.request.urlopen(receiver, timeout=5).read())["deliveries"]
    assert any(d["type"] == "alert.raised" and d["building"] == building for d in deliveries)
    # ... and the dashboard's live stream carries both the alert and the delivery.
    deadline = time.monotonic() + 15
    while not {"alert", "webhook"} <= {event for event, _ in stream_events}:
        assert time.monotonic() < deadline, f"stream events so far: {[e for e, _ in stream_events]}"
        time.sleep(0.05)
    webhooks = [data for event, data in stream_events if event == "webhook"]
    assert any(d["type"] == "alert.raised" and d["building"] == building for d in webhooks)
    # The demo's duty room dispatches the nearest station covering the building; the incident says so.
    sent = demo.wait_for(r"dispatch: incident (\d+) -> (st-\S+) ", timeout=30)
    incident = get(url + f"api/v1/incidents/{sent.group(1)}", viewer)
    assert incident["building"] == building and incident["state"] == "dispatched"
    assert incident["station"] == sent.group(2)
    assert [t["action"] for t in incident["timeline"]][:2] == ["opened", "dispatched"]
    # The fire reached the demo's WeCom and DingTalk robots (the DingTalk signature checked), each message carrying
    # an action link; opening the link shows the incident's page and changes nothing.
    wecom = demo.wait_for(r"WeCom: 火警 · .*action link: (http://127\.0\.0\.1:\d+/l/\S+)", timeout=30)
    demo.wait_for(r"DingTalk: 火警·.*action link: http://", timeout=30)
    assert "REJECTED" not in demo.output()
    with urllib.request.urlopen(wecom.group(1), timeout=5) as response:
        assert response.status == 200 and "确认收到" in response.read().decode()
    assert get(url + f"api/v1/incidents/{sent.group(1)}", viewer)["timeline"] == incident["timeline"]

    # The duty room misses the second fire: nobody acknowledges it, so after --voice-after it reaches the voice tier.
    # The demo's Aliyun stand-in checks the call's signature, prints what the duty officer hears, and his key press
    # (a signed receipt) acknowledges the incident in his name.
    assert "voice tier:" in demo.output()
    missed = demo.wait_for(r"dispatch: incident (\d+) missed by the duty room", timeout=60).group(1)
    assert missed != sent.group(1)
    demo.wait_for(r"voice: call #\d+ to 138\*\*\*\*0008: 「.+火警，请立即处置」 x2", timeout=60)
    demo.wait_for(r"voice: 138\*\*\*\*0008 pressed 1 on call #\d+: recorded 1 receipt\(s\)", timeout=30)
    deadline = time.monotonic() + 30
    while (late := get(url + f"api/v1/incidents/{missed}", viewer))["state"] != "acknowledged":
        assert time.monotonic() < deadline, f"incident {missed} not acknowledged by the key press: {late['state']}"
        time.sleep(0.25)
    steps = late["timeline"]
    actions = [t["action"] for t in steps]
    assert actions[0] == "opened" and "dispatched" not in actions
    calls = [t for t in steps if t["action"] == "paged" and (t["detail"] or {}).get("channel") == "voice"]
    assert [t["detail"]["recipient"] for t in calls] == ["周强"]  # one call per person per escalation step
    escalated = actions.index("escalated")
    acked = actions.index("acknowledged")
    # the call is the escalation's page: same moment, both before the key press acknowledged
    assert steps[escalated]["ts_ms"] == calls[0]["ts_ms"] and max(escalated, steps.index(calls[0])) < acked
    assert steps[acked]["by"] == "周强" and steps[acked]["actor"] == "voice:周强"
    assert "REJECTED" not in demo.output()

    # The month's figures count the drill's fire, at the report endpoint the banner names.
    monthly = demo.wait_for(r"monthly report:\s+(http://\S+)", timeout=5).group(1)
    assert "format=pdf" in monthly
    summary = get(monthly.replace("format=pdf", "format=json"), viewer)
    assert summary["response"]["by_severity"]["fire"] >= 1 and summary["month"] in monthly

    # The other doors: each path committed what it sent, and the panel's fire alarm (through the UITD) is an alert.
    demo.wait_for(
        r"other paths: uitd 2 committed, onenet 1 committed, ctwing 1 committed, http 1 committed", timeout=30
    )
    panel = demo.wait_for(r"panel alarm #1: UITD fire alarm at (\S+) \((\S+)\)", timeout=60)
    deadline = time.monotonic() + 30
    while not [a for a in items_of(get(url + "api/v1/alerts?severity=fire", viewer)) if a["device"] == panel.group(2)]:
        assert time.monotonic() < deadline, "no panel fire alert through the API within 30 s\n" + demo.output()
        time.sleep(0.25)

    stream.close()
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(timeout=45) == 0, demo.output()
    out = demo.output()
    assert "stopped" in out.splitlines()[-1]
    assert "Traceback" not in out, out


async def test_embedded_broker_speaks_mqtt_311_not_5() -> None:
    """Why the demo configures the gateway with ``mqtt.protocol: v311`` (docs/deploy.md): amqtt refuses MQTT 5.
    If amqtt learns MQTT 5 this fails, and the demo can use v5 like a deployment."""
    port = free_port()
    broker = await start_broker(port)

    def connack(protocol: int, **kwargs: Any) -> tuple[mqtt.Client, Any]:
        codes: queue.Queue[Any] = queue.Queue()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol, **kwargs)
        client.on_connect = lambda c, u, f, rc, p: codes.put(rc)
        client.connect("127.0.0.1", port)
        client.loop_start()
        return client, codes.get(timeout=10)

    def probe() -> None:
        v5, rc = connack(mqtt.MQTTv5, client_id="v5-probe")
        v5.loop_stop()
        assert rc.is_failure and "protocol" in str(rc).lower(), str(rc)
        # 3.1.1 with a persistent session and manual acknowledgement, as the demo's gateway connects.
        received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        gateway, rc = connack(mqtt.MQTTv311, client_id="gw", clean_session=False, manual_ack=True)
        assert not rc.is_failure
        gateway.on_message = lambda c, u, msg: received.put(msg)
        subscribed: queue.Queue[Any] = queue.Queue()
        gateway.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(rcs)
        gateway.subscribe("firegrid/#", qos=1)
        subscribed.get(timeout=10)
        device, rc = connack(mqtt.MQTTv311, client_id="dev")
        info = device.publish("firegrid/b1/d1/telemetry", b'{"alarm": false}', qos=1)
        message = received.get(timeout=10)
        assert message.payload == b'{"alarm": false}' and message.qos == 1
        gateway.ack(message.mid, message.qos)  # the late PUBACK after the gateway's commit
        info.wait_for_publish(timeout=10)
        assert info.is_published()
        for client in (gateway, device):
            client.disconnect()
            client.loop_stop()

    try:
        await asyncio.to_thread(probe)
    finally:
        await broker.shutdown()
