"""The store's schema versions: a file from the release before versions is adopted with every row, later migrations
add to it without losing anything, a newer file is refused, and a failed migration changes nothing."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import common.db
from alerts.store import AlertStore
from common.db import open_database
from common.migrations import Migration, MigrationFailed, SchemaTooNew, statements
from common.schema import MIGRATIONS, SCHEMA_VERSION
from gateway.config import FiregridConfig
from gateway.ingest.filter_ledger import FilterLedger
from gateway.ingest.pipeline import EngineState
from gateway.storage.influx import DeadLetters
from gateway.storage.presence import Presence
from tests.fixtures.make_store_v0 import DEAD_LINE, FILTERS, SNAPSHOTS, T0, config

FIXTURE = Path(__file__).parent / "fixtures" / "store_v0.sqlite"
TABLES = (
    "alerts",
    "audit",
    "incidents",
    "outbox",
    "pages",
    "endpoints",
    "gateway_devices",
    "gateway_readings",
    "gateway_engine_state",
    "gateway_mqtt_filters",
    "gateway_influx_dead_letters",
)

# The schema of the first versioned release: how a file from the release before versions is adopted, and the base
# the migration machinery is tested on with the test's own later migrations (the real later migrations are proven on
# the same file: the owners read it, and every old row keeps its values).
V1 = MIGRATIONS[:1]


@pytest.fixture
def v0(tmp_path: Path) -> Path:
    """A copy of the committed file (the test must never change the fixture itself)."""
    path = tmp_path / "firegrid.sqlite"
    shutil.copyfile(FIXTURE, path)
    return path


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection that runs no migration: the test's own view of the file."""
    return sqlite3.connect(path, isolation_level=None)


def version_of(path: Path) -> int:
    with closing(raw(path)) as db:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(raw(path)) as db:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in TABLES}


def columns(path: Path, table: str) -> list[str]:
    with closing(raw(path)) as db:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def shape(path: Path) -> dict[str, Any]:
    """Every table's columns (name, type, not null, default, key) and every index's definition."""
    with closing(raw(path)) as db:
        out: dict[str, Any] = {}
        for kind, name, table in db.execute("SELECT type, name, tbl_name FROM sqlite_master ORDER BY name"):
            if kind == "table":
                out[name] = [tuple(r[1:]) for r in db.execute(f"PRAGMA table_info({name})")]
            elif kind == "index":
                out[name] = (
                    table,
                    [tuple(r) for r in db.execute(f"PRAGMA index_xinfo({name})")],
                    # a partial index's WHERE clause is only in its SQL (None for a key's own index)
                    db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0],
                )
        return out


def fixture_config(path: Path) -> FiregridConfig:
    cfg: FiregridConfig = config(path)
    return cfg


@pytest.fixture
def owners(v0: Path) -> Iterator[dict[str, Any]]:
    opened = {
        "presence": Presence(config=fixture_config(v0), db_path=v0),
        "store": AlertStore(v0),
        "engine_state": EngineState(v0),
        "ledger": FilterLedger(v0),
        "dead": DeadLetters(v0),
    }
    yield opened
    for owner in opened.values():
        owner.close()


def test_the_fixture_is_an_unversioned_file_with_rows_of_every_owner() -> None:
    assert version_of(FIXTURE) == 0
    counts = {table: len(rows) for table, rows in dump(FIXTURE).items()}
    assert counts == {
        "alerts": 3,
        "audit": 7,
        "incidents": 2,
        "outbox": 25,
        "pages": 3,
        "endpoints": 1,
        "gateway_devices": 4,
        "gateway_readings": 4,
        "gateway_engine_state": 2,
        "gateway_mqtt_filters": 2,
        "gateway_influx_dead_letters": 1,
    }


def test_a_file_from_the_release_before_versions_is_adopted_with_every_row(v0: Path) -> None:
    before = dump(v0)
    with closing(open_database(v0, migrations=V1)):
        pass
    assert version_of(v0) == 1
    assert dump(v0) == before


def test_every_owner_reads_its_rows_from_the_adopted_file(owners: dict[str, Any]) -> None:
    store: AlertStore = owners["store"]
    alerts = {a.device: a for a in store.list_alerts()}
    assert {device: a.state for device, a in alerts.items()} == {
        "yg01-sd-01": "dispatched",
        "yg01-sd-02": "acknowledged",
        "yg02-ht-01": "resolved",
    }
    first = store.get_alert(alerts["yg01-sd-01"].id)
    assert first is not None
    assert [a.action for a in first.audit] == ["raised", "acknowledged", "dispatched"]
    detail = first.audit[2].detail
    assert first.audit[1].by == "王网格" and detail is not None and detail["to"] == "微型消防站一队"
    third = store.get_alert(alerts["yg02-ht-01"].id)
    assert third is not None and third.cause == "device_fault" and third.note == "sensor replaced"
    assert len(store.list_incidents()) == 2
    [open_incident] = store.list_incidents(state="open")
    assert sorted(open_incident.alert_ids) == sorted([alerts["yg01-sd-01"].id, alerts["yg01-sd-02"].id])
    by_code = store.incident_by_code(open_incident.ack_code)
    assert by_code is not None and by_code.id == open_incident.id and by_code.open_count == 2
    assert store.list_incidents(state="resolved")[0].alert_ids == (alerts["yg02-ht-01"].id,)
    outbox = store.outbox()
    assert len(outbox) == 25
    assert {o.channel for o in outbox} == {"webhook", "sms", "governance"}
    assert [o.state for o in store.outbox(channel="webhook") if o.state != "pending"] == ["sent"]
    assert store.disabled_endpoints() == {"http://127.0.0.1:9/gov": "410 Gone"}

    presence: Presence = owners["presence"]
    now = T0 + 10_000
    sd01 = presence.get_device("yg01-sd-01", now_ms=now)
    assert sd01 is not None and sd01["last_seen_ms"] == T0 + 2000
    assert sd01["last_values"] == {"obscuration": pytest.approx(0.3)}
    sd02 = presence.get_device("yg01-sd-02", now_ms=now)
    assert sd02 is not None and sd02["battery"] == 87.5
    ht01 = presence.get_device("yg02-ht-01", now_ms=now)
    assert ht01 is not None and ht01["status"] == "offline"
    stray = presence.get_device("zz-stray-9", now_ms=now)
    assert stray is not None and stray["registered"] is False and stray["last_seen_ms"] == T0 + 7000
    assert [r["ts_ms"] for r in presence.history("yg01-sd-01")] == [T0 + 2000, T0 + 1000, T0]

    assert owners["engine_state"].load() == SNAPSHOTS
    assert owners["ledger"].held() == sorted(FILTERS)
    dead = owners["dead"].list()
    assert len(dead) == 1 and dead[0]["status"] == 400 and dead[0]["line"] == DEAD_LINE.decode()


def test_a_new_file_has_every_owners_tables_as_the_release_before_versions_made_them(tmp_path: Path) -> None:
    fresh = tmp_path / "deeper" / "fresh.sqlite"
    with closing(open_database(fresh)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert version_of(fresh) == SCHEMA_VERSION
    first = tmp_path / "first.sqlite"
    with closing(open_database(first, migrations=V1)):
        pass
    assert shape(first) == shape(FIXTURE)


def test_the_owners_open_one_policy(tmp_path: Path) -> None:
    path = tmp_path / "firegrid.sqlite"
    store = AlertStore(path)  # still its own connection until it opens through common.db
    ledger = FilterLedger(path)
    try:
        assert version_of(path) == SCHEMA_VERSION
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert store.list_alerts() == []
    finally:
        ledger.close()
        store.close()


def test_a_row_factory_is_a_named_choice(tmp_path: Path) -> None:
    with closing(open_database(tmp_path / "f.sqlite", row_factory=sqlite3.Row)) as db:
        db.execute("INSERT INTO gateway_mqtt_filters (filter) VALUES ('a/#')")
        assert db.execute("SELECT filter FROM gateway_mqtt_filters").fetchone()["filter"] == "a/#"


ADD_SOURCE = Migration(
    version=2,
    name="alerts.source",
    apply="""
        ALTER TABLE alerts ADD COLUMN source TEXT NOT NULL DEFAULT 'mqtt';
        CREATE INDEX IF NOT EXISTS alerts_source ON alerts(source);
    """,
)


def _backfill(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE gateway_devices ADD COLUMN seen_count INTEGER")
    db.execute("UPDATE gateway_devices SET seen_count = CASE WHEN last_seen_ms IS NULL THEN 0 ELSE 1 END")


BACKFILL = Migration(version=3, name="gateway_devices.seen_count", apply=_backfill)


def test_a_second_migration_adds_its_column_with_nothing_lost(
    v0: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = dump(v0)
    with closing(open_database(v0, migrations=V1)):
        pass
    assert version_of(v0) == 1
    with closing(open_database(v0, migrations=(*V1, ADD_SOURCE))) as db:
        assert db.execute("SELECT DISTINCT source FROM alerts").fetchall() == [("mqtt",)]
    assert version_of(v0) == 2
    assert columns(v0, "alerts")[-1] == "source"
    after = dump(v0)
    assert after["alerts"] == [(*row, "mqtt") for row in before["alerts"]]
    assert {t: rows for t, rows in after.items() if t != "alerts"} == {
        t: rows for t, rows in before.items() if t != "alerts"
    }
    # a release that knows one more migration than this one: its owners read the file, the new column notwithstanding
    later = Migration(version=SCHEMA_VERSION + 1, name=ADD_SOURCE.name, apply=ADD_SOURCE.apply)
    copy = tmp_path / "later.sqlite"
    shutil.copyfile(FIXTURE, copy)
    monkeypatch.setattr(common.db, "MIGRATIONS", (*MIGRATIONS, later))
    store = AlertStore(copy)
    ledger = FilterLedger(copy)
    try:
        assert sorted(a.state for a in store.list_alerts()) == ["acknowledged", "dispatched", "resolved"]
        assert ledger.held() == sorted(FILTERS)
    finally:
        ledger.close()
        store.close()
    assert version_of(copy) == SCHEMA_VERSION + 1 and columns(copy, "alerts")[-1] == "source"
    # opening it again with the same list runs nothing
    with closing(open_database(v0, migrations=(*V1, ADD_SOURCE))):
        pass
    assert version_of(v0) == 2


def test_an_unversioned_file_runs_every_migration_in_order(v0: Path) -> None:
    before = dump(v0)
    with closing(open_database(v0, migrations=(*V1, ADD_SOURCE, BACKFILL))) as db:
        seen = dict(db.execute("SELECT device, seen_count FROM gateway_devices").fetchall())
    assert version_of(v0) == 3
    # yg02-ht-01 only ever sent its offline status: never seen
    assert seen == {"yg01-sd-01": 1, "yg01-sd-02": 1, "yg02-ht-01": 0, "zz-stray-9": 1}
    after = dump(v0)
    last_seen = columns(v0, "gateway_devices").index("last_seen_ms")
    assert after["gateway_devices"] == [(*row, int(row[last_seen] is not None)) for row in before["gateway_devices"]]
    assert after["alerts"] == [(*row, "mqtt") for row in before["alerts"]]
    assert after["gateway_readings"] == before["gateway_readings"]


def test_a_file_from_a_newer_release_is_refused(v0: Path) -> None:
    with closing(raw(v0)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = dump(v0)
    with pytest.raises(SchemaTooNew) as refused:
        open_database(v0)
    assert refused.value.found == SCHEMA_VERSION + 1 and refused.value.known == SCHEMA_VERSION
    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message and f"up to version {SCHEMA_VERSION}" in message
    assert str(v0) in message
    # every owner refuses it, and nothing was written
    with pytest.raises(SchemaTooNew):
        Presence(config=fixture_config(v0), db_path=v0)
    with pytest.raises(SchemaTooNew):
        DeadLetters(v0)
    assert version_of(v0) == SCHEMA_VERSION + 1
    assert dump(v0) == before


def _half_then_fail(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE alerts ADD COLUMN source TEXT")
    db.execute("UPDATE alerts SET source = 'half'")
    db.execute("DELETE FROM outbox")
    raise RuntimeError("disk on fire")


def test_a_failed_migration_leaves_the_file_at_its_old_version(v0: Path) -> None:
    with closing(open_database(v0, migrations=V1)):
        pass
    before = dump(v0)
    failing = Migration(version=2, name="half done", apply=_half_then_fail)
    with pytest.raises(MigrationFailed) as failed:
        open_database(v0, migrations=(*V1, failing))
    assert failed.value.version == 2 and failed.value.from_version == 1
    assert "disk on fire" in str(failed.value) and isinstance(failed.value.__cause__, RuntimeError)
    assert version_of(v0) == 1
    assert "source" not in columns(v0, "alerts")
    assert dump(v0) == before
    # a script whose second statement fails takes its first one back too
    broken = Migration(
        version=2, name="broken", apply="CREATE TABLE extra (x INTEGER); INSERT INTO nowhere VALUES (1);"
    )
    with pytest.raises(MigrationFailed):
        open_database(v0, migrations=(*V1, broken))
    with closing(raw(v0)) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0
    assert version_of(v0) == 1
    # and once fixed, it applies
    with closing(open_database(v0, migrations=(*V1, ADD_SOURCE))):
        pass
    assert version_of(v0) == 2


def test_a_failure_in_a_later_migration_keeps_the_earlier_ones(v0: Path) -> None:
    """Each migration is its own transaction: an unversioned file that fails at 2 is left adopted at 1."""
    failing = Migration(version=2, name="half done", apply=_half_then_fail)
    with pytest.raises(MigrationFailed):
        open_database(v0, migrations=(*V1, failing))
    assert version_of(v0) == 1


def test_migrations_must_be_numbered_in_order(tmp_path: Path) -> None:
    gap = Migration(version=3, name="gap", apply="SELECT 1;")
    with pytest.raises(ValueError, match="expected 2"):
        open_database(tmp_path / "f.sqlite", migrations=(*V1, gap))


def test_connections_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "firegrid.sqlite"
    runs: list[int] = []

    def counted(db: sqlite3.Connection) -> None:
        runs.append(1)
        db.execute("CREATE TABLE once (x INTEGER)")  # a second run would fail: no IF NOT EXISTS

    migrations = (*V1, Migration(version=2, name="once", apply=counted))
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        try:
            start.wait()
            open_database(path, migrations=migrations).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and runs == [1]
    assert version_of(path) == 2


def test_statements_split_where_sqlite_says_a_statement_ends() -> None:
    script = """
        CREATE TABLE t (a TEXT DEFAULT 'x;y');  -- a comment; with a semicolon
        CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN UPDATE t SET a = 'z;'; END;
        ;
    """
    parts = statements(script)
    assert len(parts) == 2
    assert parts[0].startswith("CREATE TABLE") and parts[1].startswith("-- a comment")
    assert parts[1].endswith("END;")
    with pytest.raises(ValueError, match="unterminated"):
        statements("CREATE TABLE u (a TEXT); CREATE TABLE v (a")


def test_firegrid_run_on_a_newer_store_exits_2_naming_both_versions(v0: Path, tmp_path: Path) -> None:
    """An operator who rolls back the release sees what is wrong, not a traceback, and the file is left as it was."""
    with closing(raw(v0)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = dump(v0)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "FIREGRID_STORE__PATH": str(v0), "FIREGRID_MQTT__URL": "mqtt://127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "run", "--config", str(root / "examples" / "community.yaml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"schema version {SCHEMA_VERSION + 1}" in proc.stderr and "Traceback" not in proc.stderr
    assert version_of(v0) == SCHEMA_VERSION + 1 and dump(v0) == before


def test_the_real_later_migrations_add_to_the_adopted_file_with_nothing_lost(v0: Path) -> None:
    before = dump(v0)
    with closing(open_database(v0)):
        pass
    assert version_of(v0) == SCHEMA_VERSION
    after = dump(v0)
    for table, rows in before.items():
        # Later migrations only add columns (at the end) and tables: every old row keeps its old values.
        assert [row[: len(rows[0])] for row in after[table]] == rows if rows else after[table] == [], table
    assert {"state", "station", "cause", "note", "external_ref"} <= set(columns(v0, "incidents"))
    with closing(raw(v0)) as db:
        assert db.execute("SELECT count(*) FROM incident_events").fetchone()[0] == 0


# ------------------------------------------------------------------ PostgreSQL (cluster mode's store)


def test_every_migration_has_a_postgresql_form_of_the_same_version() -> None:
    """One schema on both backends: the same version numbers, and PostgreSQL's column types (milliseconds need
    BIGINT: an INTEGER would overflow in 1970 + 24 days)."""
    for migration in MIGRATIONS:
        assert isinstance(migration.postgres, str), migration.name
        assert "INTEGER" not in migration.postgres and "BLOB" not in migration.postgres, migration.name
        assert len(statements(migration.postgres)) == len(statements(migration.apply)), migration.name  # type: ignore[arg-type]
    assert [m.version for m in MIGRATIONS][-1] == SCHEMA_VERSION and MIGRATIONS[4].name == "cluster"


def test_the_cluster_migration_gives_old_outbox_rows_their_building(tmp_path: Path) -> None:
    path = tmp_path / "v4.sqlite"
    with closing(open_database(path, migrations=MIGRATIONS[:4])) as db:
        db.execute(
            "INSERT INTO incidents (id, building, code, severity, opened_ms, last_alert_ms, updated_ms)"
            " VALUES (7, 'yg02', '1234', 4, 1, 1, 1)"
        )
        db.execute(
            "INSERT INTO alerts (id, key, rule, severity, building, state, condition, incident_id, ts_ms, raised_ms,"
            " updated_ms) VALUES (3, 'k', 'smoke', 4, 'yg01', 'raised', 'active', 7, 1, 1, 1)"
        )
        for msg, alert_id, incident_id in (("a", 3, 7), ("i", None, 7), ("n", None, None)):
            db.execute(
                "INSERT INTO outbox (msg_id, channel, target, event, priority, alert_id, incident_id, body, state,"
                " next_ms, created_ms) VALUES (?, 'webhook', 'x', 'e', 1, ?, ?, x'00', 'pending', 1, 1)",
                (msg, alert_id, incident_id),
            )
    with closing(open_database(path)) as db:
        rows = dict(db.execute("SELECT msg_id, building FROM outbox").fetchall())
    assert rows == {"a": "yg01", "i": "yg02", "n": None}
    assert version_of(path) == SCHEMA_VERSION


def _pg_version(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        assert row is not None
        return int(row[0])


def test_a_new_postgresql_store_gets_every_migration(pg_url: str) -> None:
    db = open_database(pg_url)
    try:
        assert _pg_version(pg_url) == SCHEMA_VERSION
        tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert {"alerts", "outbox", "incidents", "incident_events", "gateway_devices", "hazards", "photos"} <= tables
        kinds = dict(
            db.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'outbox'"
            ).fetchall()
        )
        assert kinds["created_ms"] == "bigint" and kinds["body"] == "bytea" and kinds["building"] == "text"
    finally:
        db.close()
    # Opening it again runs nothing: still one version row.
    open_database(pg_url).close()
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)


def test_concurrent_openers_of_a_postgresql_store_migrate_it_once(pg_url: str) -> None:
    """Eight gateways starting at once: the advisory lock lets one run each migration; the others find it done."""
    runs: list[int] = []

    def first(db: Any) -> None:
        db.execute("CREATE TABLE ran (n BIGINT)")
        db.execute("INSERT INTO ran VALUES (1)")
        runs.append(1)

    def second(db: Any) -> None:
        db.execute("INSERT INTO ran VALUES (2)")
        runs.append(2)

    steps = (
        Migration(version=1, name="first", apply="", postgres=first),
        Migration(version=2, name="second", apply="", postgres=second),
    )
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def opener() -> None:
        try:
            start.wait(10)
            open_database(pg_url, migrations=steps).close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(runs) == [1, 2]
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT n FROM ran").fetchall()) == [1, 2]
    assert _pg_version(pg_url) == 2


def test_a_postgresql_store_from_a_newer_release_is_refused(pg_url: str) -> None:
    open_database(pg_url).close()
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew) as refused:
        open_database(pg_url)
    assert refused.value.found == SCHEMA_VERSION + 1 and refused.value.known == SCHEMA_VERSION
    with pytest.raises(SchemaTooNew):
        AlertStore(pg_url)
    assert _pg_version(pg_url) == SCHEMA_VERSION + 1


def test_a_failed_postgresql_migration_leaves_the_store_at_its_old_version(pg_url: str) -> None:
    open_database(pg_url).close()

    def half(db: Any) -> None:
        db.execute("ALTER TABLE alerts ADD COLUMN source TEXT")
        raise RuntimeError("disk on fire")

    failing = Migration(version=SCHEMA_VERSION + 1, name="half done", apply="", postgres=half)
    with pytest.raises(MigrationFailed) as failed:
        open_database(pg_url, migrations=(*MIGRATIONS, failing))
    assert failed.value.from_version == SCHEMA_VERSION and "disk on fire" in str(failed.value)
    assert _pg_version(pg_url) == SCHEMA_VERSION
    db = open_database(pg_url)
    try:
        cols = {
            r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'alerts'")
        }
        assert "source" not in cols
    finally:
        db.close()
