"""Cluster mode's PostgreSQL store end to end: ``firegrid run`` with ``store.url`` raises an alert from an MQTT alarm,
delivers its webhook and keeps its shared state in PostgreSQL (the filter ledger stays in the local SQLite file);
``check-config`` names the store, ``backup`` points at pg_dump, an unreachable server is a clear start-up error.
Real Mosquitto, a real PostgreSQL server, a real webhook receiver."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from testkit.emulators.scenario import WEBHOOK_SECRET
from testkit.emulators.webhook_receiver import WebhookReceiver
from testkit.gateway import ROOT, Gateway, Publisher, store_rows, write_config
from testkit.postgres import PostgresServer
from testkit.services import MosquittoServer, free_port

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def hook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        yield receiver  # type: ignore[misc]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def _pg_rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())


async def test_an_mqtt_alarm_through_a_gateway_on_postgresql_reaches_its_webhook(
    tmp_path: Path, mosquitto: MosquittoServer, hook: WebhookReceiver, pg_url: str
) -> None:
    notify = {
        "webhooks": [
            {"url": hook.endpoint, "secret": WEBHOOK_SECRET, "allow_private": True, "events": ["alert.raised"]}
        ]
    }
    config, port = write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=None,
        devices=6,
        buildings=2,
        extra={"notify": notify, "store": {"url": pg_url}},
    )
    checked = _cli("check-config", str(config))
    assert checked.returncode == 0 and "PostgreSQL store postgresql://" in checked.stdout, checked.stderr
    gateway = Gateway(config, port, tmp_path / "gateway.log")
    await asyncio.to_thread(gateway.start)
    publisher = Publisher(mosquitto.port, client_id="pg-e2e-pub")
    try:
        payload = {"ts": int(time.time() * 1000), "seq": 1, "obscuration": 12.5, "alarm": True}
        publisher.publish("firegrid/b00/d000/telemetry", json.dumps(payload))
        await hook.wait_for(lambda: len(hook.of_type("alert.raised")) >= 1, within=30)
        assert hook.errors == []
        assert hook.of_type("alert.raised")[0].body["data"]["device"] == "d000"
        # The shared state is in PostgreSQL: the alert, its outbox row (delivered, with its building), presence.
        assert _pg_rows(pg_url, "SELECT device, state FROM alerts") == [("d000", "raised")]
        deadline = time.monotonic() + 15
        while _pg_rows(pg_url, "SELECT state, building FROM outbox") != [("sent", "b00")]:
            assert time.monotonic() < deadline, _pg_rows(pg_url, "SELECT state, building FROM outbox")
            await asyncio.sleep(0.05)
    finally:
        publisher.close()
        assert gateway.stop() == 0, gateway.log_tail()
    # Presence is flushed at shutdown, to PostgreSQL; the local file keeps the filter ledger, not the alerts.
    assert ("d000",) in _pg_rows(pg_url, "SELECT device FROM gateway_devices WHERE last_seen_ms IS NOT NULL")
    assert store_rows(tmp_path / "firegrid.sqlite", "SELECT COUNT(*) AS n FROM alerts") == [{"n": 0}]
    assert store_rows(tmp_path / "firegrid.sqlite", "SELECT COUNT(*) AS n FROM gateway_mqtt_filters")[0]["n"] > 0
    # backup: a PostgreSQL store is pg_dump's to copy.
    refused = _cli("backup", "--config", str(config), "--out", str(tmp_path / "copy.sqlite"))
    assert refused.returncode == 2 and "pg_dump" in refused.stderr and not (tmp_path / "copy.sqlite").exists()


def test_an_unreachable_postgresql_store_is_a_clear_startup_error(tmp_path: Path) -> None:
    url = f"postgresql://firegrid@127.0.0.1:{free_port()}/firegrid"
    config, _port = write_config(
        tmp_path, mqtt_url="mqtt://127.0.0.1:1", influx_url=None, devices=2, buildings=1, extra={"store": {"url": url}}
    )
    done = _cli("run", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "cannot connect to the PostgreSQL store" in done.stderr and "Traceback" not in done.stderr


def test_store_url_must_be_postgresql(tmp_path: Path) -> None:
    config, _port = write_config(
        tmp_path,
        mqtt_url="mqtt://127.0.0.1:1",
        influx_url=None,
        devices=2,
        buildings=1,
        extra={"store": {"url": "mysql://root@127.0.0.1/firegrid"}},
    )
    done = _cli("check-config", str(config))
    assert done.returncode == 2 and "store.url" in done.stderr and "postgresql://" in done.stderr


def test_period_facts_and_the_audit_export_read_the_same_on_either_store(store_target: str | Path) -> None:
    """The report queries (correlated sub-selects, a UNION paged by row value) on both backends."""
    from alerts.store import AlertStore
    from testkit.emulators.scenario import alarm, notify_config

    store = AlertStore(store_target, notify=notify_config(webhook_url="http://127.0.0.1:9/hook"))
    try:
        t0 = 1_700_000_000_000
        changes = store.apply([alarm("yg01-sd-03a"), alarm("yg01-sd-04b")], now_ms=t0)
        first = next(c.alert_id for c in changes if c.type == "alert.raised")
        incident = next(c.incident_id for c in changes if c.type == "incident.opened")
        assert first is not None and incident is not None
        store.acknowledge_incident(incident, by="王网格", now_ms=t0 + 30_000)
        store.resolve_incident(incident, actor="t", by_name="张站长", cause="real_fire", now_ms=t0 + 90_000)
        facts = store.period_facts(start_ms=t0 - 1, end_ms=t0 + 100_000)
        assert [(f.id, f.acknowledged_ms, f.resolved_ms, f.cause) for f in facts.incidents] == [
            (incident, t0 + 30_000, t0 + 90_000, "real_fire")
        ]
        assert sorted(a.device for a in facts.alerts) == ["yg01-sd-03a", "yg01-sd-04b"]
        assert store.period_facts(start_ms=t0 - 1, end_ms=t0 + 100_000, buildings=[]).incidents == ()
        rows = list(store.audit_rows(start_ms=t0 - 1, end_ms=t0 + 100_000, buildings=["yg01"]))
        assert [r.ts_ms for r in rows] == sorted(r.ts_ms for r in rows)
        assert {(r.kind, r.action) for r in rows} >= {
            ("alert", "raised"),
            ("alert", "acknowledged"),
            ("alert", "resolved"),
            ("incident", "opened"),
            ("incident", "resolved"),
        }
        detail = store.get_incident(incident)
        assert detail is not None and detail.incident.state == "resolved" and len(detail.alerts) == 2
        assert store.list_alerts(building=[]) == [] and len(store.list_alerts(building=["yg01"])) == 2
    finally:
        store.close()


def test_retention_sweeps_the_postgresql_store_and_the_local_dead_letters(tmp_path: Path, pg_url: str) -> None:
    from contextlib import closing

    from alerts.store import AlertStore
    from common.db import open_database
    from gateway.config import RetentionConfig
    from gateway.storage.retention import DAY_MS, Retention
    from testkit.emulators.scenario import alarm

    now = 1_790_000_000_000
    store = AlertStore(pg_url)
    old = store.apply([alarm("yg01-sd-03a")], now_ms=now - 500 * DAY_MS)[0].alert_id
    kept = store.apply([alarm("yg02-sd-01", building="yg02")], now_ms=now - 500 * DAY_MS)[0].alert_id
    assert old is not None and kept is not None
    store.resolve(old, by="t", cause="false_alarm", now_ms=now - 499 * DAY_MS)  # resolved: goes; open: stays
    local = tmp_path / "firegrid.sqlite"
    with closing(open_database(local)) as db:
        db.execute(
            "INSERT INTO gateway_influx_dead_letters (ts_ms, status, error, line) VALUES (?, 400, 'bad', 'x')",
            (now - 200 * DAY_MS,),
        )
    retention = Retention(local, config=RetentionConfig(batch_rows=2), url=pg_url)
    try:
        swept = retention.sweep(now_ms=now)
        assert swept.alerts == 1 and swept.incidents == 1 and swept.dead_letters == 1
        assert [a.id for a in store.list_alerts()] == [kept]
        assert retention.sweep(now_ms=now).total == 0
    finally:
        retention.close()
        store.close()
    assert store_rows(local, "SELECT COUNT(*) AS n FROM gateway_influx_dead_letters") == [{"n": 0}]


def test_a_reply_code_taken_by_a_concurrent_writer_is_drawn_again(
    pg_url: str, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateways open incidents at once and draw the same SMS reply code: the unique index makes the second
    wait for the first, find the code taken and draw another; both incidents stay open, with different codes."""
    import secrets
    import threading

    from alerts.store import AlertStore
    from testkit.emulators.scenario import alarm, notify_config

    monkeypatch.setattr(secrets, "randbelow", lambda n: 0)  # every draw the smallest code of its length
    notify = notify_config(webhook_url="http://127.0.0.1:9/hook")
    first, second = AlertStore(pg_url, notify=notify), AlertStore(pg_url, notify=notify)
    inserted, go_on = threading.Event(), threading.Event()

    def hold(cur: object) -> None:
        inserted.set()  # incident with code 1000 inserted, not committed
        assert go_on.wait(10)

    worker = threading.Thread(target=first.apply, args=([alarm("yg01-sd-03a")],), kwargs={"now_ms": 1, "also": hold})
    worker.start()
    other = threading.Thread(target=second.apply, args=([alarm("yg02-sd-01", building="yg02")],), kwargs={"now_ms": 1})
    try:
        assert inserted.wait(10)
        other.start()
        # The second writer's INSERT waits on the first's uncommitted code (a lock wait the server reports).
        deadline = time.monotonic() + 10
        database = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres.url(), autocommit=True) as watch:
            while not watch.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (database,)
            ).fetchone():
                assert time.monotonic() < deadline, "the second writer never waited on the code"
                time.sleep(0.01)
    finally:
        go_on.set()
        worker.join(10)
        other.join(10)
    codes = {i.building: i.ack_code for i in first.list_incidents(state="open")}
    assert codes["yg01"] == "1000" and codes["yg02"] not in ("1000", None) and len(codes) == 2
    first.close()
    second.close()


def test_a_lost_postgresql_server_fails_the_write_and_frees_the_store(tmp_path: Path) -> None:
    """The server goes away under a running store: a write raises a driver error (the gateway's group commit then
    stops, acknowledging nothing) instead of hanging, and the store's lock is not left held."""
    from alerts.store import AlertStore
    from common.db import DATABASE_ERRORS
    from testkit.emulators.scenario import alarm
    from testkit.postgres import PostgresServer as Server

    server = Server(workdir=tmp_path / "pg").start()
    try:
        store = AlertStore(server.create_database())
        store.apply([alarm("yg01-sd-03a")], now_ms=1)
        server.kill()
        for _ in range(2):  # and again: the first failure released the store's lock
            with pytest.raises(DATABASE_ERRORS):
                store.apply([alarm("yg01-sd-04b")], now_ms=2)
        store.close()
    finally:
        server.remove()


def test_a_gateway_recovers_and_drains_only_its_own_buildings_outbox(store_target: str | Path) -> None:
    """Cluster mode's outbox scope, on either store: each row names its building; ``due``, ``next_due_ms`` and the
    restart's ``recover`` take a building filter (another gateway's sends in flight are not "interrupted")."""
    from alerts.store import AlertStore
    from testkit.emulators.scenario import alarm, notify_config

    store = AlertStore(store_target, notify=notify_config(webhook_url="http://127.0.0.1:9/hook"))
    try:
        store.apply([alarm("yg01-sd-03a"), alarm("yg02-sd-01", building="yg02")], now_ms=1)
        rows = store.outbox()
        by_building = {b: {i.id for i in store.due(now_ms=5, buildings=[b])} for b in ("yg01", "yg02")}
        assert by_building["yg01"] and by_building["yg02"] and not by_building["yg01"] & by_building["yg02"]
        assert by_building["yg01"] | by_building["yg02"] == {r.id for r in rows}
        mine, theirs = min(by_building["yg01"]), min(by_building["yg02"])
        assert store.claim(mine, now_ms=2) is not None and store.claim(theirs, now_ms=2) is not None
        assert store.claim(mine, now_ms=3) is None  # claimed once
        assert store.recover(now_ms=4, buildings=["yg01"]) == 1
        states = {r.id: r.state for r in store.outbox()}
        assert states[mine] == "unknown" and states[theirs] == "attempting"
        assert store.next_due_ms(buildings=["yg01"], channels=["webhook"]) == 1
        assert store.recover(now_ms=4, buildings=[]) == 0
    finally:
        store.close()


def test_the_adapter_translates_placeholders_only_outside_quoted_text(pg_url: str) -> None:
    from common.db import open_database
    from common.pg import translate

    assert translate("SELECT '?', \"a?\", ? -- why?\nFROM t WHERE x LIKE 'a%' AND y = ?") == (
        "SELECT '?', \"a?\", %s -- why?\nFROM t WHERE x LIKE 'a%%' AND y = %s"
    )
    assert translate("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', %s"
    db = open_database(pg_url)
    try:
        row = db.execute("SELECT '?%' AS q, ? AS a, ? AS flag", ("x", True)).fetchone()
        assert row["q"] == "?%" and row[1] == "x" and row["flag"] == 1 and tuple(row) == ("?%", "x", 1)
        assert db.execute("SELECT 'no parameters: 100%'").fetchone() == ("no parameters: 100%",)
        assert not db.in_transaction
        db.execute("BEGIN")
        assert db.in_transaction
        db.execute("ROLLBACK")
    finally:
        db.close()
