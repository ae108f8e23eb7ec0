"""Which MQTT topic filters this gateway's persistent session may still hold (table ``gateway_mqtt_filters``).

A persistent session keeps its subscriptions across restarts.  A gateway that was given fewer buildings (a district
split over more gateways, ``mqtt.buildings``) would otherwise go on receiving the buildings it gave away, queued for
it by the broker for as long as the session lives.  MQTT offers no way to list a session's subscriptions, so the
gateway writes down every filter before it subscribes, and unsubscribes what it no longer wants after subscribing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from common.db import open_database


class FilterLedger:
    """``namespace`` names a second session of the same gateway (the fast lane, ``events``): its filters are written
    as ``@events <filter>``, which no MQTT filter of ours can look like (ids are ``[A-Za-z0-9_-]``), so each session
    sees only its own rows in the one table."""

    def __init__(self, path: Path, *, namespace: str = "") -> None:
        self._db = open_database(path)
        self._prefix = f"@{namespace} " if namespace else ""

    def _rows(self) -> set[str]:
        rows = {row[0] for row in self._db.execute("SELECT filter FROM gateway_mqtt_filters")}
        if self._prefix:
            return {r[len(self._prefix) :] for r in rows if r.startswith(self._prefix)}
        return {r for r in rows if not r.startswith("@")}

    def subscribing(self, wanted: Sequence[str], *, catch_all: Iterable[str] = ()) -> list[str]:
        """Write ``wanted`` down (before the SUBSCRIBE goes out: a crash in between must not leave a filter nobody
        knows of) and return the stale filters to unsubscribe once it is answered.  ``catch_all`` counts as held
        when nothing was written down yet: a gateway from before the ledger subscribed to the whole district."""
        keep = set(wanted)
        held = self._rows()
        stale = sorted((held or set(catch_all)) - keep)
        self._write("INSERT OR IGNORE INTO gateway_mqtt_filters (filter) VALUES (?)", wanted)
        return stale

    def unsubscribed(self, filters: Iterable[str]) -> None:
        self._write("DELETE FROM gateway_mqtt_filters WHERE filter = ?", filters)

    def held(self) -> list[str]:
        """The filters written down: a namespaced ledger's own; the main ledger's, every session's of this gateway
        (what the district's broker holds for it, whichever session carries a channel)."""
        if self._prefix:
            return sorted(self._rows())
        rows = [row[0] for row in self._db.execute("SELECT filter FROM gateway_mqtt_filters")]
        return sorted(r.split(" ", 1)[1] if r.startswith("@") else r for r in rows)

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, filters: Iterable[str]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(sql, [(self._prefix + f,) for f in filters])
        self._db.execute("COMMIT")
