"""The store's tables: every owner's DDL in one place, and the migrations that bring a file to the current version.

One SQLite file holds the alert store (alerts, audit trail, incidents, notification outbox, SMS pages, disabled
endpoints) and the gateway's own tables (device presence and kept readings, engine snapshots, the MQTT filter
ledger, InfluxDB dead letters).  Keeping their DDL together is what lets one ``PRAGMA user_version`` describe the
whole file, so a later release can add a column to any of them with a migration.

The same migrations, version for version, build a PostgreSQL store (cluster mode): each ``Migration`` carries its
``postgres`` form, derived from the SQLite text by :func:`postgres_ddl` (the DDL is the same but for the column
types; keeping one text is what keeps the two schemas from drifting apart).  ``tests/test_schema_migrations.py``
checks that every migration has one.

To change the schema, APPEND a migration (version = the last one + 1); never edit one that has been released: a
file records only the number of the last migration it ran, so a changed migration would never run on it.
"""

from __future__ import annotations

import re

from common.migrations import Migration, latest_version

# The alert store (``alerts.store.AlertStore``): alerts, their audit trail, incidents and the notification outbox,
# written together in one transaction per engine batch.
ALERTS = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity INTEGER NOT NULL,
    building TEXT NOT NULL,
    floor INTEGER,
    device TEXT,
    grid TEXT,
    state TEXT NOT NULL,
    condition TEXT NOT NULL,
    open INTEGER NOT NULL DEFAULT 1,
    reason TEXT,
    value TEXT,
    confirmed INTEGER,
    flapping INTEGER NOT NULL DEFAULT 0,
    test INTEGER NOT NULL DEFAULT 0,
    drill INTEGER NOT NULL DEFAULT 0,
    incident_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    raised_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    cleared_ms INTEGER,
    acknowledged_ms INTEGER,
    acknowledged_by TEXT,
    dispatched_ms INTEGER,
    dispatched_to TEXT,
    resolved_ms INTEGER,
    resolved_by TEXT,
    cause TEXT,
    note TEXT,
    count INTEGER NOT NULL DEFAULT 1,
    tier INTEGER NOT NULL DEFAULT 0,
    escalate_at_ms INTEGER,
    evidence TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_key ON alerts(key) WHERE open = 1;
CREATE INDEX IF NOT EXISTS alerts_escalate ON alerts(escalate_at_ms) WHERE escalate_at_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS alerts_raised ON alerts(raised_ms);
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts(incident_id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    alert_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    by TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_alert ON audit(alert_id);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    building TEXT NOT NULL,
    grid TEXT,
    drill INTEGER NOT NULL DEFAULT 0,
    code TEXT NOT NULL,
    severity INTEGER NOT NULL,
    opened_ms INTEGER NOT NULL,
    last_alert_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    closed_ms INTEGER,
    alert_count INTEGER NOT NULL DEFAULT 0,
    open_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS incidents_building ON incidents(building, drill, last_alert_ms);
CREATE INDEX IF NOT EXISTS incidents_code ON incidents(code) WHERE closed_ms IS NULL;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    priority INTEGER NOT NULL,
    alert_id INTEGER,
    incident_id INTEGER,
    recipient TEXT,
    phone TEXT,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    attempt_ms INTEGER,
    done_ms INTEGER,
    last_error TEXT,
    dedup TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(channel, priority DESC, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_next ON outbox(channel, next_ms) WHERE state = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS outbox_dedup ON outbox(dedup) WHERE state = 'pending' AND dedup IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_sms ON outbox(phone, attempt_ms) WHERE channel = 'sms';
CREATE TABLE IF NOT EXISTS pages (
    incident_id INTEGER NOT NULL,
    phone TEXT NOT NULL,
    severity INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (incident_id, phone)
);
CREATE TABLE IF NOT EXISTS endpoints (
    target TEXT PRIMARY KEY,
    disabled_ms INTEGER NOT NULL,
    reason TEXT
);
"""

# Device registry and presence (``gateway.storage.presence.Presence``), and recent readings when there is no
# InfluxDB.
PRESENCE = """
CREATE TABLE IF NOT EXISTS gateway_devices (
    device TEXT PRIMARY KEY,
    building TEXT NOT NULL,
    kind TEXT NOT NULL,
    floor INTEGER,
    grid TEXT,
    registered INTEGER NOT NULL,
    last_seen_ms INTEGER,
    last_values TEXT,
    battery REAL,
    status TEXT,
    status_ts_ms INTEGER
);
CREATE TABLE IF NOT EXISTS gateway_readings (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    building TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_readings_device ON gateway_readings (device, ts_ms);
"""

# Per-building rules-engine snapshots (``gateway.ingest.pipeline.EngineState``).
ENGINE_STATE = """
CREATE TABLE IF NOT EXISTS gateway_engine_state (
    building TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""

# The MQTT topic filters the persistent session may hold (``gateway.ingest.filter_ledger.FilterLedger``).
FILTER_LEDGER = """
CREATE TABLE IF NOT EXISTS gateway_mqtt_filters (filter TEXT PRIMARY KEY);
"""

# Lines InfluxDB refused (``gateway.storage.influx.DeadLetters``).
DEAD_LETTERS = """
CREATE TABLE IF NOT EXISTS gateway_influx_dead_letters (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error TEXT NOT NULL,
    line TEXT NOT NULL
);
"""

# The incident as the unit of work: its own lifecycle (``open`` -> ``acknowledged`` -> ``dispatched`` -> ``on_scene``
# -> ``resolved``), the station sent to it, how it ended, the governance platform's work-order id, and a timeline of
# every step with its time and actor.  ``on_scene_target_s`` and ``arrive_by_ms`` are the dispatched station's clock:
# ``arrive_by_ms`` is cleared when the station arrives or its breach has been escalated (so the escalation timer
# reads one partial index).  Incidents closed before this version are marked resolved.
INCIDENT_LOOP = """
ALTER TABLE incidents ADD COLUMN state TEXT NOT NULL DEFAULT 'open';
ALTER TABLE incidents ADD COLUMN station TEXT;
ALTER TABLE incidents ADD COLUMN cause TEXT;
ALTER TABLE incidents ADD COLUMN note TEXT;
ALTER TABLE incidents ADD COLUMN external_ref TEXT;
ALTER TABLE incidents ADD COLUMN on_scene_target_s INTEGER;
ALTER TABLE incidents ADD COLUMN arrive_by_ms INTEGER;
UPDATE incidents SET state = 'resolved' WHERE closed_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS incidents_arrive_by ON incidents(arrive_by_ms) WHERE arrive_by_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS incidents_external_ref ON incidents(external_ref) WHERE external_ref IS NOT NULL;
CREATE TABLE IF NOT EXISTS incident_events (
    id INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    actor TEXT,
    by_name TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS incident_events_incident ON incident_events(incident_id, id);
CREATE INDEX IF NOT EXISTS incident_events_ts ON incident_events(ts_ms);
"""

# What the retention sweep and the period reports select by: the audit trail and the outbox by time.
REPORT_INDEXES = """
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts_ms);
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents(opened_ms);
CREATE INDEX IF NOT EXISTS outbox_done ON outbox(done_ms) WHERE done_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS gateway_readings_ts ON gateway_readings(ts_ms);
"""

# Inspections by QR code and hazards (``alerts.inspections``): who checked which inspection point when and what they
# found, the hazards found (with their lifecycle and audit trail), and the photos people attached (files under the
# store's directory, named by the ``photos`` row).  ``inspection_points_seen`` remembers when the gateway first knew a
# point, so a point added today is not "overdue" since 1970.
INSPECTIONS = """
CREATE TABLE IF NOT EXISTS inspection_points_seen (
    point TEXT PRIMARY KEY,
    since_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inspections (
    id INTEGER PRIMARY KEY,
    point TEXT NOT NULL,
    building TEXT NOT NULL,
    grid TEXT,
    inspector TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    results TEXT NOT NULL,
    failed INTEGER NOT NULL,
    note TEXT,
    photo TEXT,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inspections_point ON inspections(point, ts_ms);
CREATE INDEX IF NOT EXISTS inspections_ts ON inspections(ts_ms);
CREATE TABLE IF NOT EXISTS hazards (
    id INTEGER PRIMARY KEY,
    building TEXT NOT NULL,
    grid TEXT,
    floor INTEGER,
    point TEXT,
    location TEXT,
    category TEXT NOT NULL,
    description TEXT NOT NULL,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    reporter TEXT,
    inspection_id INTEGER,
    photo TEXT,
    assignee TEXT,
    deadline_ms INTEGER,
    rectify_photo TEXT,
    rectify_note TEXT,
    reported_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    rectified_ms INTEGER,
    verified_ms INTEGER,
    verified_by TEXT
);
CREATE INDEX IF NOT EXISTS hazards_state ON hazards(state, deadline_ms);
CREATE INDEX IF NOT EXISTS hazards_building ON hazards(building, reported_ms);
CREATE TABLE IF NOT EXISTS hazard_audit (
    id INTEGER PRIMARY KEY,
    hazard_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    by TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS hazard_audit_hazard ON hazard_audit(hazard_id);
CREATE TABLE IF NOT EXISTS photos (
    id TEXT PRIMARY KEY,
    building TEXT,
    mime TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
"""

# Cluster mode: every outbox row names its building, so that a gateway drains only the rows of the buildings it owns
# (``Outbox.due(buildings=...)``); rows written before this version take it from their alert, else their incident.
# An SMS reply code is unique among open incidents by an index, not only by the check before the insert: on
# PostgreSQL several gateways open incidents at once, and the loser of a race on a code picks another.
CLUSTER = """
ALTER TABLE outbox ADD COLUMN building TEXT;
UPDATE outbox SET building = (SELECT a.building FROM alerts a WHERE a.id = outbox.alert_id)
    WHERE alert_id IS NOT NULL;
UPDATE outbox SET building = (SELECT i.building FROM incidents i WHERE i.id = outbox.incident_id)
    WHERE building IS NULL AND incident_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_building_due ON outbox(building, priority DESC, id) WHERE state = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open_code ON incidents(code) WHERE closed_ms IS NULL;
"""


def postgres_ddl(sqlite: str) -> str:
    """The PostgreSQL form of a SQLite DDL script: every integer is a ``BIGINT`` (they hold milliseconds since
    1970, counts and 0/1 flags: one integer type, as in SQLite), an ``INTEGER PRIMARY KEY`` an identity column,
    ``BLOB`` is ``BYTEA`` and ``REAL`` ``DOUBLE PRECISION``.  Nothing else differs: the indexes (partial ones
    included), ``ALTER TABLE ... ADD COLUMN`` and the updates are the same SQL on both."""
    ddl = re.sub(
        r"\bINTEGER PRIMARY KEY( AUTOINCREMENT)?", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", sqlite
    )
    ddl = re.sub(r"\bINTEGER\b", "BIGINT", ddl)
    ddl = re.sub(r"\bBLOB\b", "BYTEA", ddl)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)


# The change log (``alerts.store.core``): one row per alert or incident change the live stream shows, written in the
# transaction that made the change, so that a process reading the store (``firegrid console``, any number of them,
# beside the gateways that write it) sees every change once it is committed and nothing that rolled back.  ``kind``
# is the live stream's event type (``alert``, ``incident``), ``data`` its JSON.  A feed, not the record: retention
# keeps it about a day.
CHANGE_LOG = """
CREATE TABLE IF NOT EXISTS change_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    building TEXT,
    alert_id INTEGER,
    incident_id INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS change_log_ts ON change_log(ts_ms);
"""

# Cluster mode's ownership (``gateway.cluster``): the gateways (``cluster_members``), one lease per partition with its
# fencing epoch (``partition_leases``), and, when ``cluster.audit_commits`` is on (drills, acceptance tests), one row
# per partition a fenced transaction committed under (``cluster_commits``: the record that proves a fenced-off
# gateway committed nothing under an old epoch).  Every time here is the database's clock (``now()``): gateways'
# clocks may drift, the server's is one.  A SQLite store gets the tables too (one schema, one version number on
# both backends) and never uses them: cluster mode needs the PostgreSQL store.
LEASES = """
CREATE TABLE IF NOT EXISTS cluster_members (
    member       TEXT PRIMARY KEY,
    heartbeat_at TIMESTAMPTZ,
    started_at   TIMESTAMPTZ,
    stopping     BOOLEAN
);
CREATE TABLE IF NOT EXISTS partition_leases (
    partition      INT PRIMARY KEY,
    owner          TEXT NULL,
    epoch          BIGINT NOT NULL,
    expires_at     TIMESTAMPTZ NULL,
    previous_owner TEXT NULL
);
CREATE TABLE IF NOT EXISTS cluster_commits (
    member    TEXT NOT NULL,
    partition INT NOT NULL,
    epoch     BIGINT NOT NULL,
    at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS cluster_commits_at ON cluster_commits(at);
"""

MIGRATIONS: tuple[Migration, ...] = (
    # The schema as the releases before versions created it, table by table with IF NOT EXISTS: such a file has
    # user_version 0 and all or only some of the tables (each owner created its own when first opened), so this
    # adopts it as version 1 without touching a row, and creates what is missing.
    Migration(
        version=1,
        name="tables of the unversioned releases",
        apply=ALERTS + PRESENCE + ENGINE_STATE + FILTER_LEDGER + DEAD_LETTERS,
        postgres=postgres_ddl(ALERTS + PRESENCE + ENGINE_STATE + FILTER_LEDGER + DEAD_LETTERS),
    ),
    Migration(version=2, name="incident loop", apply=INCIDENT_LOOP, postgres=postgres_ddl(INCIDENT_LOOP)),
    Migration(
        version=3, name="indexes for reports and retention", apply=REPORT_INDEXES, postgres=postgres_ddl(REPORT_INDEXES)
    ),
    Migration(version=4, name="inspections and hazards", apply=INSPECTIONS, postgres=postgres_ddl(INSPECTIONS)),
    Migration(version=5, name="cluster", apply=CLUSTER, postgres=postgres_ddl(CLUSTER)),
    Migration(version=6, name="change log", apply=CHANGE_LOG, postgres=postgres_ddl(CHANGE_LOG)),
    Migration(version=7, name="cluster leases", apply=LEASES, postgres=LEASES),
)

SCHEMA_VERSION = latest_version(MIGRATIONS)
