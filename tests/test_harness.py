"""The real-server harness itself: brokers and databases start on free ports, answer, restart and keep data."""

from __future__ import annotations

import urllib.request

import paho.mqtt.client as mqtt
import pytest

from testkit.services import InfluxServer, MosquittoServer, ServiceError


def _roundtrip(port: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="harness-pub")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def _read_retained(port: int, topic: str) -> bytes | None:
    import queue

    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="harness-sub")
    client.on_message = lambda _c, _u, msg: got.put(msg.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        return got.get(timeout=5)
    except queue.Empty:
        return None
    finally:
        client.loop_stop()
        client.disconnect()


def test_mosquitto_keeps_retained_messages_across_restart(mosquitto: MosquittoServer) -> None:
    assert mosquitto.port != 1883
    _roundtrip(mosquitto.port, "firegrid/b1/sd-1/status", b"online", retain=True)
    mosquitto.restart()  # graceful: persistence file saved
    assert _read_retained(mosquitto.port, "firegrid/b1/sd-1/status") == b"online"


def test_influx_write_and_count(influx: InfluxServer) -> None:
    body = b"smoke,building=b1,device=sd-1 obscuration=1.5,alarm=true 1700000000000"
    request = urllib.request.Request(f"{influx.url}/write?db=firegrid&precision=ms", data=body, method="POST")
    with urllib.request.urlopen(request) as response:
        assert response.status == 204
    assert influx.count("smoke", "obscuration") == 1
    influx.restart()
    assert influx.count("smoke", "obscuration") == 1
    assert influx.rows('SELECT * FROM "smoke"')[0]["alarm"] is True


def test_a_broken_config_fails_with_the_log(tmp_path) -> None:
    server = MosquittoServer(workdir=tmp_path / "m", extra_config=("no_such_directive 1",))
    with pytest.raises(ServiceError) as info:
        server.start(timeout=5)
    assert "no_such_directive" in str(info.value) or "exited" in str(info.value)
