"""Simulator against a real Mosquitto: what it publishes arrives intact, in order, with retained statuses and a
real last will; load mode delivers exactly its count."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.config import load_config
from gateway.tools.cli import main as firegrid
from simulators.clock import PacedClock
from simulators.model import from_config
from simulators.publish import BrokerTarget, DevicePublisher, PooledPublisher
from simulators.runner import drive
from simulators.scenarios import parse_spec
from simulators.sim import Simulation

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"


class Subscriber:
    def __init__(self, port: int, topic: str = "firegrid/#", qos: int = 1) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, clean_session=True)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=qos)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(list(self.messages)):
                    return
            time.sleep(0.02)
        raise AssertionError(f"condition not met in {timeout}s; got {len(self.messages)} messages")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def community():
    return from_config(load_config(EXAMPLE))


def test_pooled_publishing_delivers_every_message_in_device_order(mosquitto, community):
    sub = Subscriber(mosquitto.port)
    publisher = PooledPublisher(BrokerTarget.from_url(mosquitto.url), connections=3, qos=1)
    publisher.start()
    scenarios = [parse_spec(s, community) for s in ("fire@yg01:1F+1s", "malformed@yg02+2s", "disconnect@hp01+3s/5s")]
    start = int(time.time() * 1000)
    sim = Simulation(
        community,
        seed=2,
        start_ms=start,
        scenarios=scenarios,
        intervals={"smoke": 5, "heat": 5, "extinguisher": 10, "call_point": 10},
    )
    sent = []
    try:
        # 20 virtual seconds at 10x: paced, a couple of seconds of wall time
        result = drive(
            sim,
            end_ms=start + 20_000,
            clock=PacedClock(start_ms=start, speed=10.0),
            publisher=publisher,
            on_messages=sent.extend,
        )
    finally:
        publisher.stop()
    assert result.flushed and publisher.stats.errors == 0 and publisher.stats.acked == len(sent)
    sub.wait_for(lambda got: len(got) >= len(sent))
    sub.close()
    by_device_sent: dict[str, list] = defaultdict(list)
    by_device_got: dict[str, list] = defaultdict(list)
    for m in sent:
        by_device_sent[m.topic.split("/")[2]].append((m.topic, m.payload))
    for topic, payload, _ in sub.messages:
        by_device_got[topic.split("/")[2]].append((topic, payload))
    assert by_device_got == by_device_sent  # nothing lost, nothing reordered within a device
    # the disconnect scenario published offline (standing in for the last will) and online again
    statuses = [p for t, p in by_device_got["hp01-sd-01a"] if t.endswith("/status")]
    assert statuses == [b"online", b"offline", b"online", b"offline"]  # ... and offline at the clean stop
    # a late subscriber (the gateway restarting) sees every device's status, retained
    late = Subscriber(mosquitto.port, "firegrid/+/+/status")
    late.wait_for(lambda got: len(got) == len(community.devices))
    assert all(retained and payload == b"offline" for _, payload, retained in late.messages)
    late.close()


def test_device_connections_have_a_real_last_will(mosquitto, community):
    small = community.select(["hp01-sd-01a", "hp01-sd-01b", "yg01-sd-01a"])
    sub = Subscriber(mosquitto.port, "firegrid/+/+/status")
    publisher = DevicePublisher(
        BrokerTarget.from_url(mosquitto.url), devices={d.id: small.topic(d, "status") for d in small.devices}
    )
    publisher.start()
    start = int(time.time() * 1000)
    sim = Simulation(small, seed=1, start_ms=start, scenarios=[parse_spec("disconnect@hp01+1s/2s", small)])
    sent = []
    try:
        drive(
            sim,
            end_ms=start + 5_000,
            clock=PacedClock(start_ms=start, speed=2.0),
            publisher=publisher,
            device_wills=True,
            on_messages=sent.extend,
            final_statuses=False,
        )
        # the simulator itself never published "offline": the broker did, from the dropped connections' wills
        assert not [m for m in sent if m.payload == b"offline" and m.label != "will"]
        sub.wait_for(lambda got: [p for t, p, _ in got if "hp01-sd-01a" in t] == [b"online", b"offline", b"online"])
        assert [p for t, p, _ in sub.messages if "yg01-sd-01a" in t] == [b"online"]
    finally:
        publisher.stop()
    sub.close()


def test_load_mode_cli_sends_exactly_rate_times_duration(mosquitto, tmp_path, capsys):
    sub = Subscriber(mosquitto.port, qos=0)
    record = tmp_path / "load.jsonl"
    code = firegrid(
        [
            "simulate",
            "--buildings",
            "30",
            "--devices-per-building",
            "10",
            "--rate",
            "400",
            "--duration",
            "1500ms",
            "--broker",
            mosquitto.url,
            "--qos",
            "0",
            "--record",
            str(record),
            "--seed",
            "4",
        ]
    )
    assert code == 0
    sub.wait_for(lambda got: len(got) >= 600)
    time.sleep(0.2)  # a stray extra message would arrive within this window
    sub.close()
    assert len(sub.messages) == 600
    assert len(record.read_text().splitlines()) == 600
    captured = capsys.readouterr()
    assert "sent 600 messages from 300 devices" in captured.out and "errors 0" in captured.out
    assert "progress: sent 600/600" in captured.err  # plain-text progress when not a terminal


def test_unreachable_broker_exits_1(capsys, community_config_path):
    from testkit.services import free_port

    code = firegrid(
        [
            "simulate",
            "--config",
            str(community_config_path),
            "--broker",
            f"mqtt://127.0.0.1:{free_port()}",
            "--duration",
            "1s",
        ]
    )
    assert code == 1
    assert "firegrid simulate:" in capsys.readouterr().err


def test_publisher_reconnects_after_a_broker_restart(mosquitto):
    publisher = PooledPublisher(BrokerTarget.from_url(mosquitto.url), connections=2, qos=1)
    publisher.start()
    try:
        for i in range(50):
            publisher.publish_raw(f"firegrid/b1/d{i}/telemetry", b'{"ts": 1}')
        assert publisher.flush(timeout=10)
        mosquitto.restart()
        sub = Subscriber(mosquitto.port)
        # published while paho may still be reconnecting: QoS 1 messages wait in paho and go out after it
        for i in range(50):
            publisher.publish_raw(f"firegrid/b1/d{i}/telemetry", b'{"ts": 2}')
        assert publisher.flush(timeout=20)
        sub.wait_for(lambda got: len(got) >= 50)
        sub.close()
        assert publisher.stats.disconnects >= 2 and publisher.stats.errors == 0
        assert {payload for _, payload, _ in sub.messages} == {b'{"ts": 2}'}
    finally:
        publisher.stop()
