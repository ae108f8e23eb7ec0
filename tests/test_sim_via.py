"""``firegrid simulate --via`` and ``firegrid verify --via`` through the gateway's other doors, against ``firegrid
run`` (a real subprocess with real Mosquitto and InfluxDB): the simulated traffic reaches the pipeline through each
path, and a drill verifies end to end over plain HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.tools.cli import main as firegrid
from testkit.gateway import Gateway, store_rows
from testkit.services import InfluxServer, MosquittoServer, free_port
from tests.test_verify import write_config

pytestmark = pytest.mark.timeout(180)

INGEST = "sim-ingest-token"
UITD = 0x7903


@pytest.fixture
def stack(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> Iterator[tuple[Path, Gateway, int]]:
    webhook_port = free_port()
    path = write_config(tmp_path, mosquitto=mosquitto, influx=influx, webhook_port=webhook_port)
    config = yaml.safe_load(path.read_text())
    config["http"]["tokens"].append({"name": "sim", "token": INGEST, "role": "ingest"})
    config["devices"] += [
        {"id": "yg03-pp-0101", "building": "yg03", "kind": "panel_point", "floor": 1, "location": "1层大堂"},
        {"id": "yg03-pp-0102", "building": "yg03", "kind": "panel_point", "floor": 2, "location": "2层走廊"},
    ]
    config["uitd"] = {
        "listen": f"127.0.0.1:{free_port()}",
        "panels": [
            {
                "address": UITD,
                "building": "yg03",
                "drill": True,  # a drill rig: what it reports pages no one
                "points": [
                    {"system_type": 1, "system_address": 1, "part_address": 101, "device": "yg03-pp-0101"},
                    {"system_type": 1, "system_address": 1, "part_address": 102, "device": "yg03-pp-0102"},
                ],
            }
        ],
    }
    config["ingest"] = {
        "onenet": {"token": "onenet-sim", "devices": [{"id": "6001", "device": "yg01-sd-01a"}]},
        "ctwing": {"token": "ctwing-sim", "devices": [{"id": "ctw-01b", "device": "yg01-sd-01b"}]},
    }
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    port = int(config["http"]["listen"].rpartition(":")[2])
    gateway = Gateway(path, port, tmp_path / "gateway.log").start()
    try:
        yield path, gateway, webhook_port
    finally:
        gateway.stop()


@pytest.mark.parametrize("via", ["http", "onenet", "ctwing", "uitd"])
def test_simulate_via_each_path_reaches_the_pipeline(
    stack: tuple[Path, Gateway, int], via: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config, gateway, _ = stack
    argv = ["simulate", "--config", str(config), "--via", via, "--duration", "10m", "--fast", "--quiet"]
    if via == "http":
        argv += ["--token", INGEST]
    assert firegrid(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "errors 0" in out, out
    handed = gateway.metric("firegrid_source_messages_total", source=via)
    expected = {"http": 177 * 2, "onenet": 2, "ctwing": 2, "uitd": 4}[via]  # at least: ten minutes of reports
    assert handed >= expected, (via, handed, out)
    # what went through the path is what the presence of its devices shows
    device = {"http": "yg02-sd-01a", "onenet": "yg01-sd-01a", "ctwing": "yg01-sd-01b", "uitd": "yg03-pp-0101"}[via]
    _, body = gateway.get(f"/api/v1/devices/{device}", token="verify-viewer-token")
    assert json.loads(body)["last_seen_ms"] is not None


def test_verify_drills_through_plain_http(stack: tuple[Path, Gateway, int], capsys: pytest.CaptureFixture[str]) -> None:
    config, gateway, webhook_port = stack
    code = firegrid(
        [
            "verify",
            "--config",
            str(config),
            "--api",
            f"http://127.0.0.1:{gateway.http_port}",
            "--token",
            "verify-viewer-token",
            "--webhook-listen",
            f"127.0.0.1:{webhook_port}",
            "--grace",
            "3s",
            "--no-cleanup",
            "--via",
            "http",
            "--ingest-token",
            INGEST,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS" in out, out
    rows = store_rows(gateway.config_path.parent / "firegrid.sqlite", "SELECT drill FROM alerts")
    assert rows and all(r["drill"] == 1 for r in rows)


def test_verify_drills_a_panel_alarm_through_a_uitd(
    stack: tuple[Path, Gateway, int], capsys: pytest.CaptureFixture[str]
) -> None:
    config, gateway, webhook_port = stack
    code = firegrid(
        [
            "verify",
            "--config",
            str(config),
            "--api",
            f"http://127.0.0.1:{gateway.http_port}",
            "--token",
            "verify-viewer-token",
            "--webhook-listen",
            f"127.0.0.1:{webhook_port}",
            "--grace",
            "3s",
            "--no-cleanup",
            "--via",
            "uitd",
            "--scenario",
            "panel-alarm@yg03-pp-0101+1s/20s",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "panel fire alarm" in out, out
    rows = store_rows(
        gateway.config_path.parent / "firegrid.sqlite", "SELECT rule, drill FROM alerts WHERE device = 'yg03-pp-0101'"
    )
    assert [(r["rule"], r["drill"]) for r in rows] == [("panel-fire-alarm", 1)]
