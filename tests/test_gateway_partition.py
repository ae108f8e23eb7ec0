"""Several gateways split a district by building (``mqtt.buildings``): each subscribes to, judges and shows only
its own buildings; a gateway whose persistent session still holds the whole district's filters (it ran unsplit
before) drops them, and what the broker had queued for the buildings it gave away is rejected, counted, not judged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, FiregridConfig, load_config
from gateway.ingest.filter_ledger import FilterLedger
from gateway.ingest.mqtt import subscriptions
from gateway.tools.check_config import summary
from testkit.gateway import Gateway, Publisher, wait_for, write_config
from testkit.services import MosquittoServer

TOKEN = "test-admin"


def _items(gateway: Gateway, path: str) -> list[dict[str, Any]]:
    status, body = gateway.get(path, token=TOKEN)
    assert status == 200, body
    document = json.loads(body)
    return document["items"] if isinstance(document, dict) else document


def _alarm(publisher: Publisher, building: str, device: str) -> None:
    reading = {"ts": int(time.time() * 1000), "obscuration": 0.5, "alarm": True}
    publisher.publish(f"firegrid/{building}/{device}/telemetry", json.dumps(reading))


def _gateway(tmp_path: Path, name: str, mosquitto: MosquittoServer, owned: list[str] | None) -> Gateway:
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    config, port = write_config(
        workdir,
        mqtt_url=mosquitto.url,
        influx_url=None,
        devices=8,
        buildings=4,
        client_id=f"gw-{name}",
        extra={"mqtt": {"buildings": owned}} if owned else None,
    )
    return Gateway(config, port, workdir / "gateway.log")


def test_two_gateways_split_a_district_by_building(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    # devices d00N live in building b0{N % 4}
    west = _gateway(tmp_path, "west", mosquitto, ["b00", "b01"]).start()
    east = _gateway(tmp_path, "east", mosquitto, ["b02", "b03"]).start()
    publisher = Publisher(mosquitto.port)
    try:
        _alarm(publisher, "b00", "d000")
        _alarm(publisher, "b02", "d002")
        publisher.wait_acked()
        for gateway, mine, theirs in ((west, "d000", "d002"), (east, "d002", "d000")):
            wait_for(
                lambda g=gateway, m=mine: any(a["device"] == m for a in _items(g, "/api/v1/alerts")),
                timeout=20,
                what=f"{mine}'s alarm on its own gateway",
            )
            alerts = _items(gateway, "/api/v1/alerts")
            assert not any(a["device"] == theirs for a in alerts), alerts
            assert gateway.metric("firegrid_rejections_total") == 0  # the other half never even arrived
        assert {b["id"] for b in _items(west, "/api/v1/buildings")} == {"b00", "b01"}
        assert {b["id"] for b in _items(east, "/api/v1/buildings")} == {"b02", "b03"}
        # only its own registered devices are watched for silence
        assert {d["id"] for d in _items(west, "/api/v1/devices?limit=100")} == {"d000", "d001", "d004", "d005"}
    finally:
        publisher.close()
        assert west.stop() == 0, west.log_tail()
        assert east.stop() == 0, east.log_tail()


def test_a_gateway_given_fewer_buildings_drops_the_old_subscriptions(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    # first the whole district on one gateway (a persistent session with the district-wide filters) ...
    whole = _gateway(tmp_path, "one", mosquitto, None).start()
    assert whole.stop() == 0, whole.log_tail()
    publisher = Publisher(mosquitto.port)
    try:
        # ... messages queued for that session while it is down: one for a building it is about to give away
        _alarm(publisher, "b02", "d002")
        _alarm(publisher, "b00", "d000")
        publisher.wait_acked()
        # ... then the same gateway (same client id, same store) restarted with half of the buildings
        split = _gateway(tmp_path, "one", mosquitto, ["b00", "b01"]).start()
        try:
            wait_for(
                lambda: any(a["device"] == "d000" for a in _items(split, "/api/v1/alerts")),
                timeout=20,
                what="the owned building's queued alarm",
            )
            wait_for(
                lambda: split.metric("firegrid_rejections_total", reason="foreign_building") == 1,
                timeout=20,
                what="the queued foreign message rejected",
            )
            assert not any(a["device"] == "d002" for a in _items(split, "/api/v1/alerts"))
            assert "no longer owns" in split.log_tail(200)
            # from now on the broker does not send it the other buildings at all: a foreign message published
            # before an owned one is not delivered (one session, in order), so the count stays at one
            _alarm(publisher, "b03", "d003")
            _alarm(publisher, "b01", "d001")
            publisher.wait_acked()
            wait_for(
                lambda: any(a["device"] == "d001" for a in _items(split, "/api/v1/alerts")),
                timeout=20,
                what="the owned building's next alarm",
            )
            assert split.metric("firegrid_rejections_total", reason="foreign_building") == 1
        finally:
            assert split.stop() == 0, split.log_tail()
        ledger = FilterLedger(tmp_path / "one" / "firegrid.sqlite")
        try:
            assert ledger.held() == sorted(
                f"firegrid/{b}/+/{c}" for b in ("b00", "b01") for c in ("telemetry", "event", "status")
            )
        finally:
            ledger.close()
    finally:
        publisher.close()


def _district_config(tmp_path: Path, owned: list[str]) -> Path:
    """Four buildings b00..b03, devices d000..d007 (d00N in b0{N % 4}), this gateway owning ``owned``."""
    config, _ = write_config(
        tmp_path,
        mqtt_url="mqtt://127.0.0.1:1883",
        influx_url=None,
        devices=8,
        buildings=4,
        extra={"mqtt": {"buildings": owned}},
    )
    return config


def test_partition_config(tmp_path: Path) -> None:
    loaded = load_config(_district_config(tmp_path, ["b01", "b03"]))
    assert subscriptions(loaded.mqtt)[:3] == [
        "firegrid/b01/+/telemetry",
        "firegrid/b01/+/event",
        "firegrid/b01/+/status",
    ]
    owned = loaded.owned()
    assert [b.id for b in owned.buildings] == ["b01", "b03"]
    assert {d.id for d in owned.devices} == {"d001", "d003", "d005", "d007"}
    assert owned.device("d000") is None and owned.device("d001") is not None
    assert loaded.device("d000") is not None  # the district's config itself is unchanged
    assert owned.owns("b03") and not owned.owns("b00")
    assert summary(loaded).endswith("; this gateway owns 2 buildings (4 devices)")
    whole = FiregridConfig.model_validate({"buildings": [{"id": "b1", "name": "B", "grid": "g"}]})
    assert whole.owned() is whole and whole.owns("anything")


def test_partition_config_errors_name_the_key(tmp_path: Path) -> None:
    for owned, problem in (
        (["b01", "b09"], "mqtt.buildings[1]: unknown building 'b09'"),
        (["b01", "b01"], "mqtt.buildings[1]: duplicate building 'b01'"),
        ([], "mqtt.buildings"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(_district_config(tmp_path, owned))
        assert any(problem in p for p in caught.value.problems), caught.value.problems
