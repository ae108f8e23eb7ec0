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
    def __init__(self, path: Path) -> None:
        self._db = open_database(path)

    def subscribing(self, wanted: Sequence[str], *, catch_all: Iterable[str] = ()) -> list[str]:
        """Write ``wanted`` down (before the SUBSCRIBE goes out: a crash in between must not leave a filter nobody
        knows of) and return the stale filters to unsubscribe once it is answered.  ``catch_all`` counts as held
        when nothing was written down yet: a gateway from before the ledger subscribed to the whole district."""
        keep = set(wanted)
        held = {row[0] for row in self._db.execute("SELECT filter FROM gateway_mqtt_filters")}
        stale = sorted((held or set(catch_all)) - keep)
        self._write("INSERT OR IGNORE INTO gateway_mqtt_filters (filter) VALUES (?)", wanted)
        return stale

    def unsubscribed(self, filters: Iterable[str]) -> None:
        self._write("DELETE FROM gateway_mqtt_filters WHERE filter = ?", filters)

    def held(self) -> list[str]:
        return sorted(row[0] for row in self._db.execute("SELECT filter FROM gateway_mqtt_filters"))

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, filters: Iterable[str]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(sql, [(f,) for f in filters])
        self._db.execute("COMMIT")
