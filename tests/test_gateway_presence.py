"""Presence and the demo mode: online/offline from the status channel and from silence, unregistered devices
listed, and with ``influx.url: null`` telemetry kept in the local store (and the log says so)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.harness.services import MosquittoServer
from tests.test_gateway_helpers import Gateway, Publisher, wait_for, write_config

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
