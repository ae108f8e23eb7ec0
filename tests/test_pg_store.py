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
