"""The fence: a check, inside the caller's own transaction, that this gateway still holds its leases.

:meth:`Fence.check` renews each held lease with ``UPDATE ... WHERE owner = me AND (partition, epoch) IN held``.
That update takes the lease rows' locks until the caller's transaction ends, so a peer's takeover (an ``UPDATE`` of
the same rows that bumps the epoch) waits for this commit, or this check sees the bumped epoch and fails: a commit
is either ordered before a takeover or refused.  A gateway that lost its leases (hung past the TTL, cut off) can
therefore never commit, and so never notify, again under its old epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import psycopg

_CHECK = """
UPDATE partition_leases AS l
   SET expires_at = now() + %(ttl)s * interval '1 second'
  FROM unnest(%(partitions)s::int[], %(epochs)s::bigint[]) AS held(partition, epoch)
 WHERE l.partition = held.partition AND l.epoch = held.epoch AND l.owner = %(member)s
RETURNING l.partition
"""


class LeaseLost(Exception):
    """This gateway no longer holds (some of) the leases it committed under: the transaction must roll back."""

    def __init__(self, *, partitions: tuple[int, ...]) -> None:
        super().__init__(f"lease lost for partitions {list(partitions)}")
        self.partitions = partitions


@dataclass(frozen=True)
class Fence:
    """``member`` holds ``epochs`` (``{partition: epoch}``); ``ttl_s`` is how far each check extends the leases.

    Immutable: the lease manager publishes a new fence when what it holds changes, and a commit checks the one it
    read.  An empty fence checks nothing (a gateway that owns no partition has no partition's data to commit)."""

    member: str
    epochs: Mapping[int, int] = field(default_factory=dict)
    ttl_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", MappingProxyType(dict(self.epochs)))

    def check(self, cursor: psycopg.Cursor[Any]) -> None:
        """Run inside the caller's transaction, before its commit; raises :class:`LeaseLost` if any lease is gone."""
        if not self.epochs:
            return
        partitions = sorted(self.epochs)
        cursor.execute(
            _CHECK,
            {
                "ttl": self.ttl_s,
                "partitions": partitions,
                "epochs": [self.epochs[p] for p in partitions],
                "member": self.member,
            },
        )
        matched = {row[0] for row in cursor.fetchall()}
        lost = tuple(p for p in partitions if p not in matched)
        if lost:
            raise LeaseLost(partitions=lost)
