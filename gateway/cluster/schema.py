"""The lease tables: part of the versioned schema (``common.schema.LEASES``, migration 7), which every store gets
when it is opened.  Named here too for the lease tests, which create only these tables in a bare database.

Every time in these tables is the database's clock (``now()``): gateways' clocks may drift, the server's is one.
"""

from __future__ import annotations

from typing import Final

from common.schema import LEASES

LEASE_DDL: Final = LEASES
"""``cluster_members`` (one row per gateway that ever registered), ``partition_leases`` (one row per partition,
created by the first :class:`~gateway.cluster.leases.LeaseManager` that starts) and ``cluster_commits``."""
