"""Cluster mode's ownership: partitions owned through leases in PostgreSQL, fenced by an epoch in every commit.

* :mod:`gateway.cluster.schema`: the lease tables (``cluster_members``, ``partition_leases``).
* :mod:`gateway.cluster.fence`: :class:`Fence`, the check the store runs inside each commit, and :class:`LeaseLost`.
* :mod:`gateway.cluster.leases`: :class:`LeaseManager`, which registers this gateway, renews, probes its peers,
  follows :func:`common.partitions.plan` and tells the service what it gained, lost or must hand over.

docs/cluster.md, "Ownership: partitions, leases, fencing", explains the timings.
"""

from __future__ import annotations

from gateway.cluster.fence import Fence, LeaseLost
from gateway.cluster.leases import LeaseManager, MemberBusy, PartitionCountMismatch
from gateway.cluster.schema import LEASE_DDL

__all__ = ["LEASE_DDL", "Fence", "LeaseLost", "LeaseManager", "MemberBusy", "PartitionCountMismatch"]
