"""The GB/T 26875.3 listener of ``firegrid run``: a simulated UITD connects over TCP to the real gateway process (with
real Mosquitto and InfluxDB) and sends a fire alarm panel's part status frames."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.ingest.uitd import Command
from testkit.gateway import Gateway, store_rows, wait_for, write_config
from testkit.services import InfluxServer, MosquittoServer, free_port
from testkit.uitd_panel import FAULT, FIRE_ALARM, Panel, part_status_frame

pytestmark = pytest.mark.timeout(180)

UITD = 0x0000_0003_7900  # the panel's UITD address
TOKEN = "test-admin"


def _config(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer, **uitd: Any) -> tuple[Path, int, int]:
    uitd_port = free_port()
    config, port = write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=influx.url,
        devices=4,
        buildings=2,
        extra={
            "devices": [
                {"id": "d000", "building": "b00", "kind": "smoke", "floor": 1},
                {"id": "pp-3-east", "building": "b01", "kind": "panel_point", "floor": 3, "location": "3层东走廊"},
                {"id": "pp-5-west", "building": "b01", "kind": "panel_point", "floor": 5, "location": "5层西楼梯间"},
            ],
            "uitd": {
                "listen": f"127.0.0.1:{uitd_port}",
                "idle_timeout_s": 30,
                "panels": [
                    {
                        "address": UITD,
                        "building": "b01",
                        "points": [
                            {
                                "system_type": 1,
                                "system_address": 1,
                                "part_type": 42,
                                "part_address": 7,
                                "device": "pp-3-east",
                            },
                            {"system_type": 1, "system_address": 1, "part_address": 9, "device": "pp-5-west"},
                        ],
                    }
                ],
                **uitd,
            },
        },
    )
    return config, port, uitd_port


def _alerts(db: Path, device: str) -> list[dict[str, Any]]:
    return store_rows(db, "SELECT key, rule, severity, building, floor, device FROM alerts WHERE device = ?", (device,))


def test_fire_alarm_is_confirmed_after_commit_and_names_the_mapped_point(
    tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer
) -> None:
    config, port, uitd_port = _config(tmp_path, mosquitto, influx)
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    panel = Panel(uitd_port)
    try:
        panel.send(part_status_frame(serial=101, source=UITD, parts=[(1, 1, 42, 7, FIRE_ALARM)]))
        confirm = panel.answer(101)
        assert confirm is not None, gateway.log_tail()
        # the confirm swaps the addresses and keeps the serial
        assert confirm.destination == UITD and confirm.command == Command.CONFIRM
        # durable before the confirm: the alert is already in the store when the confirm arrives
        (alert,) = _alerts(db, "pp-3-east")
        assert alert["rule"] == "panel-fire-alarm" and alert["severity"] == 4
        assert (alert["building"], alert["floor"]) == ("b01", 3)
        status, body = gateway.get("/api/v1/devices/pp-3-east", token=TOKEN)
        assert status == 200, body
        assert json.loads(body)["location"] == "3层东走廊"
        status, body = gateway.get("/api/v1/alerts?building=b01", token=TOKEN)
        items = json.loads(body)["items"]
        assert [(a["device"], a["floor"], a["severity"]) for a in items] == [("pp-3-east", 3, "fire")]
        # the alert itself names the mapped building, floor and location
        assert [(a["building"], a["floor"], a["location"]) for a in items] == [("b01", 3, "3层东走廊")]
        status, body = gateway.get(f"/api/v1/alerts/{items[0]['id']}", token=TOKEN)
        assert status == 200 and json.loads(body)["location"] == "3层东走廊", body
        # a fault of the other point (mapped with any part type) is trouble
        panel.send(part_status_frame(serial=102, source=UITD, parts=[(1, 1, 3, 9, FAULT)]))
        assert panel.answer(102) is not None
        (fault,) = _alerts(db, "pp-5-west")
        assert (fault["rule"], fault["severity"], fault["floor"]) == ("panel-fault", 2, 5)
        # the reading reached InfluxDB like an MQTT one
        wait_for(
            lambda: influx.count("panel_point", "fire_alarm", where="device = 'pp-3-east'") >= 1,
            timeout=20,
            what="the panel point's reading in InfluxDB",
        )
        # a part that is not mapped is confirmed (the frame was fine) and counted as unmapped_point; a fault there
        # goes no further, but a fire alarm is never dropped: it is raised as an unregistered point of the building
        panel.send(part_status_frame(serial=103, source=UITD, parts=[(1, 1, 42, 998, FAULT)]))
        assert panel.answer(103) is not None
        assert _alerts(db, f"uitd{UITD}-1-1-998") == []
        panel.send(part_status_frame(serial=105, source=UITD, parts=[(1, 1, 42, 999, FIRE_ALARM)]))
        assert panel.answer(105) is not None
        (unmapped,) = _alerts(db, f"uitd{UITD}-1-1-999")
        assert (unmapped["rule"], unmapped["building"]) == ("panel-fire-alarm", "b01")
        status, body = gateway.get("/api/v1/rejections?reason=unmapped_point", token=TOKEN)
        assert len(json.loads(body)["items"]) == 2
        # an unknown UITD is denied
        panel.send(part_status_frame(serial=104, source=UITD + 1, parts=[(1, 1, 42, 7, FIRE_ALARM)]))
        assert panel.answer(104, command=Command.DENY) is not None
        assert gateway.metric("firegrid_rejections_total", reason="unknown_panel") == 1
    finally:
        panel.close()
        gateway.stop()


def test_kill_between_receipt_and_commit_the_panel_resends_and_the_alert_is_raised_once(
    tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer
) -> None:
    config, port, uitd_port = _config(tmp_path, mosquitto, influx)
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    frame = part_status_frame(serial=7, source=UITD, parts=[(1, 1, 42, 7, FIRE_ALARM)])
    # Hold the store's write lock: the group commit that would make the alert durable cannot finish.
    blocker = sqlite3.connect(db, timeout=10, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    panel = Panel(uitd_port)
    try:
        panel.send(frame)
        wait_for(
            lambda: gateway.metric("firegrid_source_messages_total", source="uitd") >= 1,
            timeout=10,
            what="the frame handed to the pipeline",
        )
        assert panel.answer(7, timeout=1.0) is None, "confirmed before the commit"
        gateway.kill()  # SIGKILL between receipt and commit
        blocker.execute("ROLLBACK")
        assert _alerts(db, "pp-3-east") == []
        panel.close()
        gateway = Gateway(config, port, tmp_path / "gateway-2.log").start()
        panel = Panel(uitd_port)
        panel.send(frame)  # the UITD sends the unconfirmed frame again
        assert panel.answer(7) is not None, gateway.log_tail()
        panel.send(frame)  # and once more, as if our confirm had been lost
        assert panel.answer(7, timeout=10) is not None
        rows = _alerts(db, "pp-3-east")
        assert [r["rule"] for r in rows] == ["panel-fire-alarm"]
    finally:
        blocker.close()
        panel.close()
        gateway.stop()


def test_bad_frames_are_rejected_with_reasons_and_the_next_good_frame_still_raises_its_alert(
    tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer
) -> None:
    config, port, uitd_port = _config(tmp_path, mosquitto, influx, max_frame_bytes=150)
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    good = part_status_frame(serial=9, source=UITD, parts=[(1, 1, 42, 7, FIRE_ALARM)])
    bad_checksum = bytearray(part_status_frame(serial=1, source=UITD, parts=[(1, 1, 42, 7, FIRE_ALARM)]))
    bad_checksum[-3] ^= 0xFF
    wrong_length = bytearray(part_status_frame(serial=2, source=UITD, parts=[(1, 1, 42, 7, FIRE_ALARM)]))
    wrong_length[24:26] = (2000).to_bytes(2, "little")  # over the standard's 1024
    truncated = part_status_frame(serial=3, source=UITD, parts=[(1, 1, 42, 7, FIRE_ALARM)])[:40]
    oversized = part_status_frame(serial=4, source=UITD, parts=[(1, 1, 42, p, FIRE_ALARM) for p in (7, 8, 9)])
    noise = bytes(random.Random(17).randrange(256) for _ in range(300)).replace(b"@@", b"@.")
    panel = Panel(uitd_port)
    try:
        for raw in (bytes(bad_checksum), noise, bytes(wrong_length), oversized, truncated):
            panel.send(raw)
        panel.send(good)
        assert panel.answer(9) is not None, gateway.log_tail()
        for serial in (1, 2, 3, 4):
            assert panel.answer(serial, timeout=0) is None
        # a UITD that hangs up inside a frame: truncated
        cut = Panel(uitd_port)
        cut.send(truncated)
        cut.close()
        wait_for(
            lambda: gateway.metric("firegrid_rejections_total", reason="truncated") >= 1,
            timeout=10,
            what="the cut frame rejected as truncated",
        )
        assert [r["rule"] for r in _alerts(db, "pp-3-east")] == ["panel-fire-alarm"]
        _status, body = gateway.get("/api/v1/rejections", token=TOKEN)
        reasons = {r["reason"] for r in json.loads(body)["items"]}
        assert {"bad_checksum", "bad_length", "truncated", "oversized", "no_start", "bad_end"} <= reasons, reasons
        assert gateway.metric("firegrid_rejections_total", reason="bad_checksum") == 1
    finally:
        panel.close()
        gateway.stop()


def _request_time(serial: int) -> bytes:
    from gateway.ingest.uitd import ApplicationUnit, UitdCommand, UnitType, build_frame, encode_frame
    from testkit.uitd_panel import now_cst

    unit = ApplicationUnit(type_flag=UnitType.READ_UITD_TIME, objects=(UitdCommand(),))
    frame = build_frame(serial=serial, time=now_cst(), source=UITD, destination=1, command=Command.REQUEST, unit=unit)
    return encode_frame(frame)


def _closed_by_peer(panel: Panel, timeout: float) -> bool:
    """True once the gateway has closed the connection (what it sent before is read and kept)."""
    panel.sock.settimeout(timeout)
    try:
        while chunk := panel.sock.recv(65536):
            panel.frames.extend(f for f in panel.reader.feed(chunk) if not hasattr(f, "reason"))
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_limits_time_sync_and_parts_registered_per_panel(
    tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer
) -> None:
    from gateway.ingest.uitd import ApplicationUnit, SyncTime, UnitType
    from testkit.uitd_panel import CST

    second = UITD + 1
    config, port, uitd_port = _config(tmp_path, mosquitto, influx, max_connections=2, idle_timeout_s=2)
    data = yaml.safe_load(config.read_text())
    data["uitd"]["panels"].append({"address": second, "building": "b00", "register_parts": True})
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    db = tmp_path / "firegrid.sqlite"
    gateway = Gateway(config, port, tmp_path / "gateway.log").start()
    first, other = Panel(uitd_port), Panel(uitd_port)
    try:
        # the UITD asks for the time: a response carrying the gateway's clock (China Standard Time)
        first.send(_request_time(31))
        answer = first.answer(31, command=Command.RESPONSE)
        assert answer is not None and isinstance(answer.unit, ApplicationUnit)
        assert answer.unit.type_flag == UnitType.SYNC_UITD_TIME
        (sync,) = answer.unit.objects
        assert isinstance(sync, SyncTime)
        assert abs(sync.time.to_datetime(tz=CST).timestamp() - time.time()) < 5
        # ... and on its first frame the gateway set its clock (a control frame of type 90)
        controls = [f for f in first.frames if f.command == Command.CONTROL]
        assert controls and controls[0].unit.type_flag == UnitType.SYNC_UITD_TIME
        assert controls[0].destination == UITD

        # a third connection is over the limit: closed at once, counted
        third = Panel(uitd_port)
        assert _closed_by_peer(third, timeout=5)
        third.close()
        assert gateway.metric("firegrid_rejections_total", reason="too_many_connections") == 1

        # a panel whose parts are registered as they report: an unregistered panel_point raises its alert
        other.send(part_status_frame(serial=5, source=second, parts=[(1, 2, 17, 33, FIRE_ALARM)]))
        assert other.answer(5) is not None, gateway.log_tail()
        device = f"uitd{second}-1-2-33"
        (alert,) = _alerts(db, device)
        assert (alert["rule"], alert["building"]) == ("panel-fire-alarm", "b00")
        _, body = gateway.get(f"/api/v1/devices/{device}", token=TOKEN)
        listed = json.loads(body)
        assert listed["kind"] == "panel_point" and listed["registered"] is False

        # silent longer than idle_timeout_s: the gateway closes the connection
        assert _closed_by_peer(first, timeout=10)
    finally:
        first.close()
        other.close()
        gateway.stop()
