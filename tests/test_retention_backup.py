"""Records kept and recoverable: retention removes only what is older than its limit (in batches, off the event
loop), the InfluxDB database firegrid creates gets its retention policy from the same config, and a backup taken
while a real gateway takes in readings and alarms restores into a store with every alert committed before it began.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerts.store import AlertStore
from gateway.config import InfluxConfig, RetentionConfig
from gateway.storage.influx import InfluxClient
from gateway.storage.retention import DAY_MS, Retention
from rules.types import AlertTransition, Severity
from testkit.gateway import Gateway, Publisher, store_rows, wait_for, write_config
from testkit.services import InfluxServer, MosquittoServer

NOW = 1_790_000_000_000  # 2026-09-21: the sweep's injected "now"
ROOT = Path(__file__).resolve().parent.parent


def raise_alert(store: AlertStore, n: int, at_ms: int, *, building: str = "b01") -> tuple[int, int]:
    changes = store.apply(
        [
            AlertTransition(
                transition="raised",
                key=f"smoke-detector-alarm:{building}:d{n}",
                rule="smoke-detector-alarm",
                severity=Severity.FIRE,
                building=building,
                floor=1,
                device=f"d{n}",
                ts_ms=at_ms,
                reason="smoke",
                grid="g1",
            )
        ],
        now_ms=at_ms,
    )
    raised = next(c for c in changes if c.type == "alert.raised")
    return int(raised.alert_id or 0), int(raised.incident_id or 0)


def test_retention_removes_only_what_is_older_than_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "firegrid.sqlite"
    store = AlertStore(path)
    limit = 400 * DAY_MS
    # (age at NOW in days, resolved?) for alerts, each in its own incident (different buildings)
    plan = [(800, True), (401, True), (400.5, True), (399, True), (30, True), (500, False), (2, False)]
    ids: dict[int, tuple[int, int, float, bool]] = {}
    for n, (age, resolved) in enumerate(plan):
        at = NOW - int(age * DAY_MS)
        alert_id, incident_id = raise_alert(store, n, at, building=f"b{n:02d}")
        if resolved:
            store.resolve(alert_id, by="t", cause="false_alarm", now_ms=at + 60_000)
        ids[n] = (alert_id, incident_id, age, resolved)  # the store wrote each incident's timeline steps itself
    with closing(sqlite3.connect(path)) as db, db:
        for k in range(25):  # readings every 2 days back to 50 days ago, dead letters every 10 days back to 250
            db.execute(
                "INSERT INTO gateway_readings (device, building, kind, ts_ms, value) VALUES ('d1','b01','smoke',?,?)",
                (NOW - k * 2 * DAY_MS - 1, orjson.dumps({"obscuration": k}).decode()),
            )
            db.execute(
                "INSERT INTO gateway_influx_dead_letters (ts_ms, status, error, line) VALUES (?, 400, 'bad', 'x')",
                (NOW - k * 10 * DAY_MS - 1,),
            )
    with closing(sqlite3.connect(path)) as db:
        events = dict(db.execute("SELECT incident_id, count(*) FROM incident_events GROUP BY incident_id").fetchall())
    pauses: list[int] = []
    retention = Retention(path, config=RetentionConfig(batch_rows=3))  # the defaults: 400, 30 and 90 days
    swept = retention.sweep(now_ms=NOW, pause=lambda: pauses.append(1))

    # The last change of a resolved alert is 60 s after it was raised.
    gone = {n for n, (_, _, age, resolved) in ids.items() if resolved and age * DAY_MS - 60_000 > limit}
    assert gone == {0, 1, 2}
    left = {a.id for a in store.list_alerts(limit=1000)}
    assert left == {ids[n][0] for n in ids if n not in gone}  # open alerts stay, however old
    incidents = {i.id for i in store.list_incidents(limit=1000)}
    assert incidents == {ids[n][1] for n in ids if n not in gone}
    with closing(sqlite3.connect(path)) as db:
        audit_of = {r[0] for r in db.execute("SELECT DISTINCT alert_id FROM audit")}
        events_of = {r[0] for r in db.execute("SELECT DISTINCT incident_id FROM incident_events")}
        readings = sorted(r[0] for r in db.execute("SELECT ts_ms FROM gateway_readings"))
        dead = sorted(r[0] for r in db.execute("SELECT ts_ms FROM gateway_influx_dead_letters"))
    assert audit_of == left and events_of == incidents
    assert readings == sorted(NOW - k * 2 * DAY_MS - 1 for k in range(25) if k * 2 * DAY_MS + 1 <= 30 * DAY_MS)
    assert dead == sorted(NOW - k * 10 * DAY_MS - 1 for k in range(25) if k * 10 * DAY_MS + 1 <= 90 * DAY_MS)
    gone_events = sum(events.get(ids[n][1], 0) for n in gone)
    assert gone_events >= 3  # each gone incident had at least its opening on its timeline
    assert swept.alerts == 3 and swept.incidents == 3 and swept.incident_events == gone_events
    assert swept.readings == 25 - len(readings) and swept.dead_letters == 25 - len(dead)
    assert swept.batches > 4 and len(pauses) == swept.batches  # small batches, each yielding the database
    # Nothing more is old enough: a second sweep removes nothing.
    assert retention.sweep(now_ms=NOW).total == 0
    # 0 keeps a kind forever.
    forever = Retention(path, config=RetentionConfig(alerts_days=0, readings_days=0, dead_letters_days=0))
    assert forever.sweep(now_ms=NOW + 10_000 * DAY_MS).total == 0
    forever.close()
    retention.close()
    store.close()


async def test_the_sweep_runs_in_the_background_with_an_injected_clock(tmp_path: Path) -> None:
    path = tmp_path / "firegrid.sqlite"
    store = AlertStore(path)
    old, _ = raise_alert(store, 1, NOW - 500 * DAY_MS)
    store.resolve(old, by="t", cause="test", now_ms=NOW - 500 * DAY_MS)
    recent, _ = raise_alert(store, 2, NOW - DAY_MS)
    retention = Retention(path, config=RetentionConfig(interval_s=3600))
    done = asyncio.Event()
    results: list[Any] = []
    sweep_threads: list[int] = []
    loop_thread = threading.get_ident()
    original = retention.sweep

    def watched(**kwargs: Any) -> Any:
        sweep_threads.append(threading.get_ident())
        return original(**kwargs)

    retention.sweep = watched  # type: ignore[method-assign]
    task = asyncio.create_task(retention.run(clock_ms=lambda: NOW, on_swept=lambda s: (results.append(s), done.set())))
    await asyncio.wait_for(done.wait(), 30)
    task.cancel()
    assert results[0].alerts == 1
    assert sweep_threads and loop_thread not in sweep_threads  # swept in a worker thread, not on the event loop
    assert [a.id for a in store.list_alerts()] == [recent]
    retention.close()
    store.close()


async def test_firegrid_creates_its_influx_database_with_the_configured_retention(tmp_path: Path) -> None:
    server = InfluxServer(workdir=tmp_path / "influx").start(create_database=False)
    try:
        client = InfluxClient(InfluxConfig(url=server.url, database="firegrid_r"))
        assert await client.ensure_database(retention_days=400) == "firegrid"
        policies = server.rows('SHOW RETENTION POLICIES ON "firegrid_r"')
        mine = next(p for p in policies if p["name"] == "firegrid")
        assert mine["duration"] == "9600h0m0s" and mine["default"] is True
        # Again, with a new limit: the policy is altered, not duplicated.
        await client.ensure_database(retention_days=500)
        policies = server.rows('SHOW RETENTION POLICIES ON "firegrid_r"')
        assert [p["duration"] for p in policies if p["name"] == "firegrid"] == ["12000h0m0s"]
        await client.close()
    finally:
        server.stop(timeout=10)


class Flow(threading.Thread):
    """Readings from every device and, one device after another, an alarm: a steady stream of new alerts."""

    def __init__(self, port: int, devices: int) -> None:
        super().__init__(daemon=True)
        self.publisher = Publisher(port, client_id="backup-flow")
        self.devices = devices
        self.stop = threading.Event()
        self.alarms = 0

    def run(self) -> None:
        base = int(time.time() * 1000) - 60_000
        seq = 0
        while not self.stop.is_set() and self.alarms < self.devices:
            seq += 1
            for d in range(self.devices):
                alarm = d == self.alarms
                payload = {"ts": base + seq * 10, "seq": seq, "obscuration": 0.2, "alarm": alarm, "battery": 90}
                self.publisher.publish(f"firegrid/b{d % 10:02d}/d{d:03d}/telemetry", orjson.dumps(payload))
            self.alarms += 1
            time.sleep(0.02)  # paces the stream (about 50 alarms a second); nothing waits on it


@pytest.mark.slow
def test_a_backup_while_alerts_flow_restores_every_alert_committed_before_it(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    influx = InfluxServer(workdir=tmp_path / "influx").start(create_database=False)
    config_path, port = write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=influx.url,
        devices=300,
        extra={"influx": {"create_database": True, "database": "fg_backup"}, "retention": {"influx_days": 400}},
    )
    gateway = Gateway(config_path, port, tmp_path / "gateway.log").start()
    flow = Flow(mosquitto.port, 300)
    db = tmp_path / "firegrid.sqlite"
    try:
        # The gateway created its database with the configured retention policy.
        policy = wait_for(
            lambda: [p for p in influx.rows('SHOW RETENTION POLICIES ON "fg_backup"') if p["name"] == "firegrid"],
            timeout=20,
            what="the gateway to create its InfluxDB database",
        )
        assert policy[0]["duration"] == "9600h0m0s" and policy[0]["default"] is True

        flow.start()
        wait_for(lambda: len(store_rows(db, "SELECT id FROM alerts")) >= 40, timeout=60, what="40 alerts committed")
        before = {r["id"] for r in store_rows(db, "SELECT id FROM alerts")}
        out = tmp_path / "backups" / "firegrid-backup.sqlite"
        result = subprocess.run(
            [sys.executable, "-m", "gateway.tools.cli", "backup", "--config", str(config_path), "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "backed up" in result.stdout
        wait_for(
            lambda: len(store_rows(db, "SELECT id FROM alerts")) > len(before) + 20,
            timeout=60,
            what="alerts to keep flowing after the backup",
        )
    finally:
        flow.stop.set()
        flow.join(timeout=30)
        flow.publisher.close()
        gateway.stop()
        influx.stop(timeout=10)

    # Restore as docs/reports.md says: the backup file becomes the store (no -wal or -shm beside it).
    assert not Path(f"{out}-wal").exists()
    restored = tmp_path / "restored" / "firegrid.sqlite"
    restored.parent.mkdir()
    shutil.copyfile(out, restored)
    store = AlertStore(restored)
    try:
        listed = {a.id for a in store.list_alerts(limit=10_000)}
        assert before <= listed, sorted(before - listed)
        assert all(store.get_alert(i) is not None for i in before)
    finally:
        store.close()
    with closing(sqlite3.connect(restored)) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
