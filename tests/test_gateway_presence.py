"""Presence and the demo mode: online/offline from the status channel and from silence, unregistered devices
listed, and with ``influx.url: null`` telemetry kept in the local store (and the log says so)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from testkit.gateway import Gateway, Publisher, wait_for, write_config
from testkit.services import MosquittoServer

TOKEN = "test-admin"


def _device(gateway: Gateway, device: str) -> dict:
    status, body = gateway.get(f"/api/v1/devices/{device}", token=TOKEN)
    assert status == 200, body
    return json.loads(body)


def test_presence_and_local_store_without_influx(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    config, port = write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=None,
        devices=10,
        extra={"presence": {"heartbeat_s": {"smoke": 2, "heat": 300, "extinguisher": 300, "call_point": 300}}},
    )
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port)
    now = int(time.time() * 1000)
    try:
        assert "telemetry is kept in the local store only" in gateway.log_tail()
        for i in range(5):
            publisher.publish("firegrid/b01/d001/telemetry", json.dumps({"ts": now + i, "obscuration": 0.5 + i}))
        publisher.publish("firegrid/b02/d002/status", "offline", retain=True)
        publisher.publish("firegrid/b03/zz7/telemetry", json.dumps({"kind": "smoke", "obscuration": 0.1}))
        publisher.wait_acked()
        wait_for(lambda: _device(gateway, "d001")["status"] == "online", timeout=10, what="d001 online")
        assert _device(gateway, "d002")["status"] == "offline"  # its own retained status (or last will)
        unregistered = _device(gateway, "zz7")
        assert unregistered["registered"] is False and unregistered["building"] == "b03"
        # silence: d001's heartbeat is 2 s; after that without a message it is offline
        wait_for(lambda: _device(gateway, "d001")["status"] == "offline", timeout=10, what="d001 offline by silence")
        # the readings themselves are in the local store
        with sqlite3.connect(tmp_path / "firegrid.sqlite") as db:
            rows = wait_for(
                lambda: db.execute("SELECT count(*) FROM gateway_readings WHERE device = 'd001'").fetchone()[0] == 5,
                timeout=10,
                what="5 readings in the local store",
            )
            assert rows
    finally:
        publisher.close()
        assert gateway.stop() == 0, gateway.log_tail()


def _absent_alerts(gateway: Gateway, device: str) -> list[dict]:
    status, body = gateway.get("/api/v1/alerts?limit=200", token=TOKEN)
    assert status == 200, body
    document = json.loads(body)
    items = document["items"] if isinstance(document, dict) else document
    return [a for a in items if a["rule"] == "device-absent" and a.get("device") == device]


def test_a_broker_outage_is_not_every_device_going_silent(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """While the gateway itself has no broker link, silence says nothing about the devices: no absence alert may be
    raised for the outage (a district's worth of trouble SMS), and absence works again once the link is back."""
    config, port = write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=None,
        devices=4,
        buildings=2,
        extra={"presence": {"heartbeat_s": {"smoke": 2, "heat": 300, "extinguisher": 300, "call_point": 300}}},
    )
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    publisher = Publisher(mosquitto.port)
    try:
        for device, building in (("d001", "b01"), ("d003", "b01")):
            publisher.publish(f"firegrid/{building}/{device}/telemetry", json.dumps({"obscuration": 0.2}))
        publisher.wait_acked()
        wait_for(lambda: _device(gateway, "d001")["status"] == "online", timeout=10, what="d001 seen")
        publisher.close()
        mosquitto.stop()
        wait_for(lambda: "broker link lost" in gateway.log_tail(200), timeout=20, what="the gateway noticing")
        # The outage itself is the condition under test: it must outlast the absence period (2 x 2 s).
        time.sleep(6)
        assert _absent_alerts(gateway, "d001") == [] and _absent_alerts(gateway, "d003") == []
        mosquitto.start()
        wait_for(lambda: "reconnected" in gateway.log_tail(200), timeout=30, what="the gateway reconnecting")
        publisher = Publisher(mosquitto.port, client_id="test-pub-2")
        publisher.publish("firegrid/b01/d001/telemetry", json.dumps({"obscuration": 0.3}))
        publisher.wait_acked()
        wait_for(lambda: _device(gateway, "d001")["values"].get("obscuration") == 0.3, timeout=10, what="d001")
        assert _absent_alerts(gateway, "d001") == [], "the outage was reported as the device going silent"
        # d003 stays silent after the link returned: that is a real absence, raised after its period.
        wait_for(lambda: _absent_alerts(gateway, "d003"), timeout=20, what="d003 absent after the link returned")
    finally:
        publisher.close()
        assert gateway.stop() == 0, gateway.log_tail()


def test_a_sliced_sweep_sees_every_device_once_per_round(tmp_path: Path) -> None:
    """The gateway sweeps presence in slices (a tenth of a district every 100 ms): every device is still looked at
    once per round, in order, and one that fell silent is reported once."""
    from gateway.config import load_config
    from gateway.ingest.contract import registry_from_config
    from gateway.storage.presence import Presence

    config_path, _ = write_config(tmp_path, mqtt_url="mqtt://127.0.0.1:1", influx_url=None, devices=25, buildings=5)
    config = load_config(config_path)
    presence = Presence(config=config, db_path=tmp_path / "presence.sqlite")
    changes: list[str] = []
    presence.on_change = lambda device: changes.append(device["id"])
    t0 = int(time.time() * 1000)
    for ref in registry_from_config(config).values():
        presence.seen(ref, t0)
    try:
        # the first round is the first look: no change; slices of 10, 10 and 5
        assert [presence.sweep(now_ms=t0, limit=10) for _ in range(3)] == [0, 0, 0]
        # everyone falls silent (smoke heartbeat: 300 s): the next round reports each device once, in order
        later = t0 + 301_000
        assert [presence.sweep(now_ms=later, limit=10) for _ in range(3)] == [10, 10, 5]
        assert changes == [f"d{d:03d}" for d in range(25)]
        # a new round: nothing changed since
        assert presence.sweep(now_ms=later, limit=10) == 0
        assert presence.sweep(now_ms=later) == 0
    finally:
        presence.close()


def test_presence_and_kept_readings_survive_a_restart_on_either_store(tmp_path: Path, store_target: Path | str) -> None:
    """What a restart must not forget (last seen, last values, status; kept readings without InfluxDB), in the
    SQLite file or in cluster mode's PostgreSQL store; ``writable`` answers for either."""
    from gateway.config import load_config
    from gateway.ingest.contract import registry_from_config
    from gateway.storage.presence import Presence
    from rules.types import Reading, StatusChange

    extra = {"store": {"url": store_target}} if isinstance(store_target, str) else None
    config_path, _ = write_config(
        tmp_path, mqtt_url="mqtt://127.0.0.1:1", influx_url=None, devices=4, buildings=2, extra=extra
    )
    config = load_config(config_path)
    refs = registry_from_config(config)
    t0 = 1_700_000_000_000
    presence = Presence(config=config, db_path=tmp_path / "presence.sqlite")
    presence.keep_history = True
    try:
        assert presence.writable()
        presence.reading(Reading(ref=refs["d000"], ts_ms=t0, values={"obscuration": 1.5, "battery": 87}))
        presence.reading(Reading(ref=refs["d000"], ts_ms=t0 + 1000, values={"obscuration": 2.5}))
        presence.status(StatusChange(ref=refs["d001"], ts_ms=t0 + 500, online=False))
        presence.flush()
        # A second flush updates the rows it wrote (an upsert on both stores).
        presence.seen(refs["d001"], t0 + 2000)
        presence.flush()
    finally:
        presence.close()
    again = Presence(config=config, db_path=tmp_path / "presence.sqlite")
    try:
        d0 = again.get_device("d000", now_ms=t0 + 2000)
        d1 = again.get_device("d001", now_ms=t0 + 2000)
        assert d0 is not None and d0["last_seen_ms"] == t0 + 1000 and d0["battery"] == 87
        assert d0["last_values"] == {"obscuration": 2.5, "battery": 87}
        assert d1 is not None and d1["status"] == "offline" and d1["last_seen_ms"] == t0 + 2000
        assert [r["ts_ms"] for r in again.history("d000")] == [t0 + 1000, t0]
    finally:
        again.close()
    if isinstance(store_target, str):  # cluster mode: nothing of it in the local file
        assert not (tmp_path / "presence.sqlite").exists()
