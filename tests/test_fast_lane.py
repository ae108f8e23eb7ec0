"""The fast lane, end to end: ``firegrid run`` against a real Mosquitto.

A burst of telemetry waits in the broker for the gateway (queued on its persistent session while it was down), then a
detector's ``alarm`` event is published behind it.  With ``mqtt.event_lane`` (the default) the event comes by its own
session and its alarm is committed before telemetry that was queued ahead of it; with one session, the broker hands
it over in order and it is committed after.  The order is read from the store (``alerts.id`` is the order in which
the group commits inserted them), never from a clock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.ingest.filter_ledger import FilterLedger
from testkit.gateway import Gateway, Publisher, publish_all, readings, store_rows, wait_for, write_config
from testkit.services import MosquittoServer

pytestmark = pytest.mark.timeout(300)

PER_DEVICE = 100  # 200 devices: a burst of 20,000 telemetry messages
DEVICES = 200


def _alarm_ids(db: Path) -> dict[str, int] | None:
    """The store's smoke-detector alarms by device, once d000's, d001's and d002's are all there."""
    rows = store_rows(db, "SELECT id, device FROM alerts WHERE rule = 'smoke-detector-alarm'")
    ids = {r["device"]: r["id"] for r in rows}
    return ids if {"d000", "d001", "d002"} <= ids.keys() else None


@pytest.mark.parametrize("event_lane", [True, False], ids=["fast-lane", "one-lane"])
def test_an_alarm_event_overtakes_a_queued_burst(tmp_path: Path, mosquitto: MosquittoServer, event_lane: bool) -> None:
    config, port = write_config(
        tmp_path, mqtt_url=mosquitto.url, influx_url=None, devices=DEVICES, extra={"mqtt": {"event_lane": event_lane}}
    )
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()  # creates the persistent session(s)
    gateway.stop()

    now = int(time.time() * 1000)
    base = now - PER_DEVICE * 1000 - 60_000
    burst = readings(DEVICES, PER_DEVICE, base_ms=base)
    middle = len(burst) // 2
    # d001's alarm telemetry (no event) in the middle of the burst, d002's at its very end
    burst.insert(middle, ("firegrid/b01/d001/telemetry", json.dumps({"ts": now - 30_000, "alarm": True}).encode()))
    burst.append(("firegrid/b02/d002/telemetry", json.dumps({"ts": now - 20_000, "alarm": True}).encode()))
    publisher = Publisher(mosquitto.port)
    try:
        publish_all(publisher, burst)
        # d000 enters alarm: its event last, behind the whole burst (its own older readings included)
        publisher.publish("firegrid/b00/d000/event", json.dumps({"ts": now - 10_000, "type": "alarm"}).encode())
        publisher.wait_acked()
    finally:
        publisher.close()

    gateway.start()
    try:
        # /readyz names the fast lane's session when there is one (call points and alarm events come by it only)
        checks = wait_for(
            lambda: (body := gateway.get("/readyz")[1]) and json.loads(body)["checks"],
            timeout=20,
            what="/readyz",
        )
        if event_lane:
            wait_for(
                lambda: json.loads(gateway.get("/readyz")[1])["checks"]["mqtt_events"]["ok"],
                timeout=20,
                what="the events session in /readyz",
            )
        else:
            assert "mqtt_events" not in checks
        ids = wait_for(
            lambda: _alarm_ids(db),
            timeout=120,
            what="the three alarms in the store",
        )
        # every message of the burst committed and acknowledged: none is left for a later start
        wait_for(
            lambda: gateway.metric("firegrid_readings_total") >= len(burst) - 1,
            timeout=120,
            what="the whole burst committed",
        )
        if event_lane:
            assert ids["d000"] < ids["d001"] < ids["d002"], ids  # the event overtook the telemetry queued ahead
        else:
            assert ids["d001"] < ids["d000"], ids  # the one-lane build: in the broker's order
        # d000's own telemetry from before its event arrived after it and was stored, but cleared nothing
        rows = store_rows(db, "SELECT state, condition, open FROM alerts WHERE device = 'd000'")
        assert [(r["condition"], r["open"]) for r in rows] == [("active", 1)], rows
    finally:
        gateway.stop()


def test_each_session_unsubscribes_only_what_it_held(tmp_path: Path) -> None:
    """The filter ledger is one table for both sessions: the events session's rows never look stale to the main
    session (which would unsubscribe a filter it does not hold and forget the events session's), and back."""
    db = tmp_path / "firegrid.sqlite"
    main, events = FilterLedger(db), FilterLedger(db, namespace="events")
    try:
        # the one-lane build held every channel on the main session
        assert main.subscribing(["firegrid/+/+/telemetry", "firegrid/+/+/event", "firegrid/+/+/status"]) == []
        # the fast lane is switched on: the main session gives up `event`, which the events session takes
        stale = main.subscribing(["firegrid/+/+/telemetry", "firegrid/+/+/status"])
        assert stale == ["firegrid/+/+/event"]
        main.unsubscribed(stale)
        assert events.subscribing(["firegrid/+/+/event"]) == []
        assert main.subscribing(["firegrid/+/+/telemetry", "firegrid/+/+/status"]) == []  # nothing of the other's
        assert events.held() == ["firegrid/+/+/event"]
        # the gateway as a whole holds all three, whichever session carries them
        assert main.held() == ["firegrid/+/+/event", "firegrid/+/+/status", "firegrid/+/+/telemetry"]
        # given fewer buildings: the events session unsubscribes its district-wide filter, and only that
        assert events.subscribing(["firegrid/b01/+/event"]) == ["firegrid/+/+/event"]
    finally:
        main.close()
        events.close()


def test_the_events_session_follows_mqtt_buildings(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    """A gateway that owns b00 only: its fast lane subscribes to b00's events, so another building's alarm event is
    not even delivered to it (not a foreign_building rejection: no filter of it matches), and b00's raises."""
    config, port = write_config(
        tmp_path, mqtt_url=mosquitto.url, influx_url=None, extra={"mqtt": {"buildings": ["b00"]}}
    )
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    try:
        wait_for(
            lambda: json.loads(gateway.get("/readyz")[1])["checks"]["mqtt_events"]["ok"],
            timeout=20,
            what="the events session",
        )
        now = int(time.time() * 1000)
        publisher = Publisher(mosquitto.port)
        try:
            # one publisher, one order: the foreign event would reach the events session before the owned one
            publisher.publish("firegrid/b01/d001/event", json.dumps({"ts": now, "type": "alarm"}).encode())
            publisher.publish("firegrid/b00/d000/event", json.dumps({"ts": now, "type": "alarm"}).encode())
            publisher.wait_acked()
        finally:
            publisher.close()
        wait_for(
            lambda: store_rows(db, "SELECT id FROM alerts WHERE device = 'd000'"),
            timeout=20,
            what="b00's alarm from its event",
        )
        assert store_rows(db, "SELECT id FROM alerts WHERE device = 'd001'") == []
        assert gateway.metric("firegrid_rejections_total", reason="foreign_building") == 0
        # counted just after the commit that stored the alarm; the foreign one would have been counted with or before it
        wait_for(
            lambda: gateway.metric("firegrid_mqtt_messages_total", channel="event") >= 1,
            timeout=10,
            what="the event counted",
        )
        assert gateway.metric("firegrid_mqtt_messages_total", channel="event") == 1
    finally:
        gateway.stop()
    ledger = FilterLedger(db, namespace="events")
    try:
        assert ledger.held() == ["firegrid/b00/+/event"]
    finally:
        ledger.close()
