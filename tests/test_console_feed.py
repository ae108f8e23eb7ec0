"""The change log and the feed ``firegrid console`` follows it with: rows written in the store's own transactions
(none for one that rolled back), read after the last id on SQLite, and on PostgreSQL woken by ``LISTEN`` with the
rows of transactions that commit out of id order still handed on, once each."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import psycopg
import pytest

from alerts.store import AlertStore, InvalidTransition
from gateway.api import RENDERINGS_KEY, create_api_app
from gateway.api.routes.state import STATE_KEY
from gateway.api.routes.stream import store_listener
from gateway.config import RetentionConfig
from gateway.service.console_feed import ChangeFeed, ChangeRow, PostgresChanges, SqliteChanges
from gateway.storage.retention import DAY_MS, Retention
from gateway.tools.console import Console
from testkit.api import build_runtime, config_for_tests
from testkit.emulators.scenario import alarm

T0 = 1_700_000_000_000

PG_CHANGE_LOG = """
CREATE TABLE change_log (
    id BIGSERIAL PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    building TEXT,
    alert_id BIGINT,
    incident_id BIGINT,
    data TEXT NOT NULL
)
"""


def _log(path: Path) -> list[tuple[int, str, str, str | None, int | None]]:
    db = sqlite3.connect(path)
    try:
        return [tuple(r) for r in db.execute("SELECT id, kind, data, building, alert_id FROM change_log ORDER BY id")]
    finally:
        db.close()


def test_the_store_logs_each_change_in_its_transaction(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = AlertStore(path)
    try:
        changes = store.apply([alarm("yg01-sd-03a")], now_ms=T0)
        rows = _log(path)
        # one row per change the listeners heard, in their order; without the HTTP API's renderer the row names
        # the change and its ids (a console renders the record from the store)
        assert [r[1] for r in rows] == ["alert", "incident"]
        assert [c.type for c in changes] == ["alert.raised", "incident.opened"]
        assert '"change":"alert.raised"' in rows[0][2] and rows[0][3] == "yg01" and rows[0][4] == changes[0].alert_id
        alert_id = changes[0].alert_id
        assert alert_id is not None
        # with a renderer, its JSON
        store.core.change_renderer = lambda change: ("alert", {"change": change.type, "building": "yg01", "x": 1})
        store.acknowledge(alert_id, by="op", now_ms=T0 + 1000)
        assert _log(path)[-1][1:4] == ("alert", '{"change":"alert.acknowledged","building":"yg01","x":1}', "yg01")
        # a command that fails rolls back: no row
        before = len(_log(path))
        with pytest.raises(InvalidTransition):
            store.acknowledge(alert_id, by="op", now_ms=T0 + 2000)
        assert len(_log(path)) == before
        # a renderer that raises does not stop the write: the row falls back to the change's name
        store.core.change_renderer = lambda change: 1 / 0  # type: ignore[assignment,return-value]
        store.resolve(alert_id, by="op", cause="false_alarm", now_ms=T0 + 3000)
        assert [r[2].split(",")[0] for r in _log(path)[-2:]] == [
            '{"change":"alert.resolved"',
            '{"change":"incident.resolved"',
        ]
    finally:
        store.close()


def test_retention_sweeps_the_change_log_after_a_day(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = AlertStore(path)
    store.apply([alarm("yg01-sd-03a")], now_ms=T0)
    store.close()
    retention = Retention(path, config=RetentionConfig())
    try:
        assert retention.sweep(now_ms=T0 + DAY_MS - 1).change_log == 0
        assert retention.sweep(now_ms=T0 + DAY_MS + 1).change_log == 2
    finally:
        retention.close()
    assert _log(path) == []


async def test_sqlite_feed_hands_on_what_is_new_once(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = AlertStore(path)
    got: list[ChangeRow] = []
    arrived = asyncio.Event()

    def publish(row: ChangeRow) -> None:
        got.append(row)
        arrived.set()

    store.apply([alarm("yg01-sd-01a")], now_ms=T0)  # before the feed started: history, not news
    feed = ChangeFeed(source=SqliteChanges(path), publish=publish, poll_s=0.05)
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.started.wait(), 10)
        await asyncio.to_thread(store.apply, [alarm("yg01-sd-03a")], now_ms=T0 + 1)
        await asyncio.wait_for(arrived.wait(), 10)
        while len(got) < 2:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 10)
        # the second alarm of the building joins its open incident
        assert [(r.kind, r.data["change"]) for r in got] == [
            ("alert", "alert.raised"),
            ("incident", "incident.updated"),
        ]
        assert got[0].id < got[1].id and feed.healthy
        assert await feed.catch_up() == 0  # nothing twice
    finally:
        feed.stop()
        task.cancel()
        await feed.close()
        store.close()


async def test_postgres_feed_wakes_on_notify_and_keeps_late_commits(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as setup:
        await setup.execute(PG_CHANGE_LOG)
    got: list[int] = []
    arrived = asyncio.Event()

    def publish(row: ChangeRow) -> None:
        got.append(row.id)
        arrived.set()

    # the safety poll is far away: only NOTIFY can wake the feed within the test's deadlines
    feed = ChangeFeed(source=PostgresChanges(pg_url), publish=publish, safety_poll_s=120)
    task = asyncio.create_task(feed.run())
    early = await psycopg.AsyncConnection.connect(pg_url)
    late = await psycopg.AsyncConnection.connect(pg_url)
    try:
        await asyncio.wait_for(feed.started.wait(), 10)
        insert = "INSERT INTO change_log (ts_ms, kind, building, data) VALUES (%s, 'alert', 'b00', %s) RETURNING id"
        # "late" takes the lower id and commits last
        cur = await late.execute(insert, (T0, '{"change": "alert.raised"}'))
        late_row = await cur.fetchone()
        cur = await early.execute(insert, (T0, '{"change": "alert.acknowledged"}'))
        early_row = await cur.fetchone()
        assert late_row is not None and early_row is not None and late_row[0] < early_row[0]
        await early.execute("NOTIFY firegrid_changes")
        await early.commit()
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == [early_row[0]]
        arrived.clear()
        await late.execute("NOTIFY firegrid_changes")
        await late.commit()
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == [early_row[0], late_row[0]]  # the lower id, committed later, is not lost
        assert await feed.catch_up() == 0  # and nothing is handed on twice
        # a transaction that rolls back notifies nobody and leaves nothing
        await early.execute(insert, (T0, '{"change": "alert.resolved"}'))
        await early.execute("NOTIFY firegrid_changes")
        await early.rollback()
        assert await feed.catch_up() == 0 and len(got) == 2
    finally:
        await early.close()
        await late.close()
        feed.stop()
        task.cancel()
        await feed.close()


async def test_console_renders_rows_a_process_without_the_api_wrote(
    tmp_path: Path, community_config_path: Path
) -> None:
    config = config_for_tests(community_config_path, tmp_path)
    console = Console(config)
    writer = AlertStore(config.resolve_path(config.store.path))  # no HTTP API: its rows carry no rendering
    try:
        await console.feed.start()
        changes = await asyncio.to_thread(writer.apply, [alarm("yg01-sd-03a")], now_ms=T0)
        async with console.hub.subscribe() as sub:
            assert await console.feed.catch_up() == 2
            first = await asyncio.wait_for(sub.get(), 5)
            second = await asyncio.wait_for(sub.get(), 5)
        assert first is not None and second is not None
        assert first.type == "alert" and first.data["change"] == "alert.raised"
        assert first.data["alert"]["id"] == changes[0].alert_id and first.data["alert"]["building"] == "yg01"
        assert second.type == "incident" and second.data["incident"]["id"] == changes[0].incident_id
    finally:
        writer.close()
        await console.close()


def test_the_change_log_holds_what_the_gateways_stream_sends(tmp_path: Path, community_config_path: Path) -> None:
    runtime = build_runtime(config_for_tests(community_config_path, tmp_path))
    app = create_api_app(runtime)
    assert runtime.store is not None and runtime.hub is not None
    runtime.store.add_listener(store_listener(app[STATE_KEY], app[RENDERINGS_KEY]))
    try:
        changes = runtime.store.apply([alarm("yg01-sd-03a")], now_ms=T0)
        rows = _log(runtime.store.path)
        events = list(runtime.hub._history)
        assert [e.type for e in events] == [r[1] for r in rows] == ["alert", "incident"]
        # the same JSON, byte for byte: rendered once, inside the transaction, for both
        assert [orjson.loads(e.payload) for e in events] == [orjson.loads(r[2]) for r in rows]
        assert events[0].data["alert"]["id"] == changes[0].alert_id
        assert app[RENDERINGS_KEY]._kept == {}  # nothing held once told
    finally:
        runtime.store.close()


async def test_postgres_feed_comes_back_after_its_connections_are_cut(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as setup:
        await setup.execute(PG_CHANGE_LOG)
        got: list[int] = []
        arrived = asyncio.Event()

        def publish(row: ChangeRow) -> None:
            got.append(row.id)
            arrived.set()

        feed = ChangeFeed(source=PostgresChanges(pg_url), publish=publish, safety_poll_s=120)
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(feed.started.wait(), 10)
            # the server drops the feed's LISTEN and query connections (a failover, an idle timeout)
            await setup.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            async with setup.transaction():
                cur = await setup.execute(
                    "INSERT INTO change_log (ts_ms, kind, data) VALUES (%s, 'alert', '{}') RETURNING id", (T0,)
                )
                row = await cur.fetchone()
                await setup.execute("NOTIFY firegrid_changes")
            assert row is not None
            # the feed notices, reconnects and reads what was committed while it was away
            await asyncio.wait_for(arrived.wait(), 15)
            assert got == [row[0]] and feed.healthy
        finally:
            feed.stop()
            task.cancel()
            await feed.close()
