"""The alert store's tables, and how its SQLite file is opened: WAL, ``synchronous=FULL`` (a transition and the
notifications it causes must survive a power cut once the gateway has acknowledged the MQTT messages behind them),
a busy timeout for the moments another process (a backup, ``firegrid check``) holds the file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

_SCHEMA = """
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


def open_db(path: Path) -> sqlite3.Connection:
    """The store's connection (autocommit: the store opens its own ``BEGIN IMMEDIATE`` transactions), with every
    table created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(_SCHEMA)
    return db
