"""The lease tables, as DDL the tests apply directly (the versioned PostgreSQL schema will take it over).

Every time in these tables is the database's clock (``now()``): gateways' clocks may drift, the server's is one.
"""

from __future__ import annotations

from typing import Final

LEASE_DDL: Final = """
CREATE TABLE IF NOT EXISTS cluster_members (
    member       TEXT PRIMARY KEY,
    heartbeat_at TIMESTAMPTZ,           -- renewed every renew interval; older than the lease TTL = dead for planning
    started_at   TIMESTAMPTZ,           -- when this incarnation registered
    stopping     BOOLEAN                -- a graceful stop in progress: plan without it, take what it releases
);
CREATE TABLE IF NOT EXISTS partition_leases (
    partition      INT PRIMARY KEY,
    owner          TEXT NULL,           -- NULL: free
    epoch          BIGINT NOT NULL,     -- the fencing token: +1 on every acquisition
    expires_at     TIMESTAMPTZ NULL,    -- renewed by the owner and by every fenced commit
    previous_owner TEXT NULL            -- who had it before the current or last owner: a free partition's home
);
"""
"""``cluster_members`` (one row per gateway that ever registered) and ``partition_leases`` (one row per partition,
created by the first :class:`~gateway.cluster.leases.LeaseManager` that starts)."""
